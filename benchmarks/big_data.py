"""
Memory and batch time on big data: train.py on train.bin files of growing size (sparse files, so
no disk is used), and data/openwebtext/prepare.py's tokenise-and-write on growing datasets.

$ python benchmarks/big_data.py                       # train.bin of 10 MB, 1 GB, 8 GB; prepare of 20k, 200k docs
$ python benchmarks/big_data.py --sizes_gb=0.01,16 --rounds=3

For train.py: a tiny model (so that get_batch is a visible share of each step), median ms/iter over
the run and the peak resident memory, the sizes run in alternation. For prepare (the real script,
on a JSON-lines corpus): peak resident memory, and peak anonymous memory, which leaves out the
pages of memory-mapped Arrow files that count as resident but that the kernel reclaims at will.
One JSON line per measurement goes to the results file.
"""
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import report  # noqa: E402
from configurator import configure  # noqa: E402
from scripts import command, run_script, start  # noqa: E402  (benchmarks/scripts.py, beside this one)

sizes_gb = '0.01,1,8'  # train.bin sizes to compare, in GB
rounds = 2  # alternating rounds over the sizes
iters = 300  # training iterations per run
docs = '20000,200000'  # prepare: dataset sizes in documents ('' skips this part)
results_file = 'bench_results.jsonl'
configure(globals())

work = tempfile.mkdtemp(prefix='big_data_')
tiny = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=12', '--device=cpu',
        '--gradient_accumulation_steps=1',
        '--eval_iters=2', f'--eval_interval={iters}', '--log_interval=1', f'--max_iters={iters}', '--warmup_iters=10']


def record(entry):
    print(json.dumps(entry), flush=True)
    with open(results_file, 'a') as f:
        f.write(json.dumps(entry) + '\n')


try:
    for size in sizes_gb.split(','):
        folder = os.path.join(work, 'data', f'size{size}')
        os.makedirs(folder)
        with open(os.path.join(folder, 'train.bin'), 'wb') as f:
            f.truncate(int(float(size) * 2**30) // 2 * 2)
        with open(os.path.join(folder, 'val.bin'), 'wb') as f:
            f.truncate(2**20)
        with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:  # a two-token vocabulary: every token is 0
            pickle.dump({'vocab_size': 2, 'itos': {0: 'a', 1: 'b'}, 'stoi': {'a': 0, 'b': 1}}, f)
    for round_index in range(rounds):
        for size in sizes_gb.split(','):
            out_dir = os.path.join(work, 'out')
            shutil.rmtree(out_dir, ignore_errors=True)
            log = run_script('train.py', f'--dataset=size{size}', f'--out_dir={out_dir}', *tiny, cwd=work).stdout
            times = [e['ms_per_iter'] for e in report.steady_steps(report.read_metrics(out_dir))]
            record({'bench': 'big_data_train', 'train_bin_gb': float(size), 'round': round_index,
                    'median_ms_per_iter': round(statistics.median(times), 3),
                    'peak_rss_gb': float(re.search(r'peak memory ([\d.]+) GB', log).group(1))})
    for n_docs in filter(None, docs.split(',')):
        corpus = os.path.join(work, f'docs{n_docs}.jsonl')
        with open(corpus, 'w') as f:
            for i in range(int(n_docs)):
                f.write(json.dumps({'text': f"Some words of a made-up document, number {i}, long enough. " * 20}) + '\n')
        errors = os.path.join(work, 'prepare.stderr')
        with open(errors, 'w') as stderr:  # a file: datasets' progress bars would fill a pipe no one reads yet
            child = start(command('data/openwebtext/prepare.py', '--dataset=json', f'--data_files={corpus}',
                                  '--num_proc=1', f'--out_dir={work}/prepared'),
                          env=dict(HF_HOME=os.path.join(work, 'hf'), HF_DATASETS_OFFLINE='1'),
                          stdout=subprocess.DEVNULL, stderr=stderr)
            peak_anon_kb = 0  # anonymous memory: what the kernel cannot reclaim, unlike memory-mapped file pages
            # os.wait4 rather than child.poll(): it hands back the child's own resource usage, whose ru_maxrss
            # is its peak resident memory
            while not (ended := os.wait4(child.pid, os.WNOHANG))[0]:
                try:
                    with open(f'/proc/{child.pid}/status') as f:
                        anon = [int(line.split()[1]) for line in f if line.startswith('RssAnon:')]
                    peak_anon_kb = max([peak_anon_kb] + anon)
                except OSError:
                    pass
                time.sleep(0.02)
        _, status, usage = ended
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait for it again
        if child.returncode != 0:
            sys.exit(f"data/openwebtext/prepare.py failed:\n{open(errors).read()[-3000:]}")
        tokens = sum(os.path.getsize(os.path.join(work, 'prepared', f'{s}.bin')) // 2 for s in ('train', 'val'))
        record({'bench': 'big_data_prepare', 'documents': int(n_docs), 'tokens': tokens,
                'peak_rss_gb': round(usage.ru_maxrss / 2**20, 3),
                'peak_anon_gb': round(peak_anon_kb / 2**20, 3)})
finally:
    shutil.rmtree(work, ignore_errors=True)
