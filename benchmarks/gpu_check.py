"""
Check the whole GPU path in one go and record its figures (benchmarks/gpu_check.sh runs this):
train.py on shakespeare_char in bfloat16 + compile (with every host sync counted), in float16 with
a GradScaler and Muon (synced counted too) and in float32 (TF32); a resume across dtypes; torchrun
with nccl, stopped by SIGTERM and resumed; sample.py with and without the KV cache, and compiled;
bench.py's training step for the GPT-2 124M shape (bfloat16, compile) and its generation.

$ bash benchmarks/gpu_check.sh --report_dir=$OUT                              # quick: 7 minutes at most
$ bash benchmarks/gpu_check.sh --quick=False --full=True --report_dir=$OUT    # the whole recipes, to val 1.47
$ python benchmarks/gpu_check.py --device=cpu --tiny=True --report_dir=report # the same steps, tiny, on a CPU

First it checks what it needs (torch, the device and its free memory, the compiler, the data, a
writable report_dir) and stops within seconds with one line if something is missing. It needs no
network. report_dir gets three files to bring back: table.md (rewritten after every step, so a
check cut short still leaves its rows), results.jsonl, and log.txt (every command with its whole
output). Runs and checkpoints go to out_root. The whole check stops, failing, when budget_s runs
out, so one 10-minute command always returns its report; benchmarks/gpu_runbook.md has the
expected time of each step on an H200.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import data, flops, out_dirs, report  # noqa: E402
from configurator import configure  # noqa: E402
from benchmarks import scripts  # noqa: E402  (by its package: the tests also run this file in their own process)

device = 'cuda'
tiny = False  # tiny shapes and few iterations, so the check itself runs in the test suite on a CPU
quick = True  # the steps below up to bench.py; with --quick=False --full=True just the whole recipes
full = False  # train the shakespeare_char recipe, classic and modern, each until val loss <= target_loss
target_loss = 1.47
iters = 100  # iterations per training case
dataset = 'shakespeare_char'
report_dir = 'gpu-check-report'  # table.md, results.jsonl, log.txt: the folder to bring back
out_root = os.path.join(tempfile.gettempdir(), 'nanogpt-gpu-check')  # run folders and checkpoints
budget_s = 420  # the check fails, keeping its report, when it runs longer than this
min_free_gb = 16.0  # free GPU memory the check needs: the GPT-2 shape's step (batch 12 x 1024) with room
configure(globals())

on_gpu = device.startswith('cuda')
started = time.time()
data_dir = os.path.join('data', dataset)


def check_environment():
    """Everything the steps need, checked in seconds: each missing piece stops the check in one line."""
    version = tuple(int(part) for part in re.findall(r'\d+', torch.__version__)[:2])
    if version < (2, 9):
        report.fail(f"torch {torch.__version__} is older than 2.9, the oldest this repo runs on (requirements.txt)")
    if data.check_dataset(data_dir, dataset) is None:  # sample.py decodes with its vocabulary
        report.fail(f"{data_dir}/meta.pkl is missing: prepare the dataset again (python data/{dataset}/prepare.py)")
    train_tokens = os.path.getsize(os.path.join(data_dir, 'train.bin')) // 2
    if on_gpu:
        if not torch.cuda.is_available():
            report.fail(f"torch {torch.__version__} sees no CUDA device; on a CPU run --device=cpu --tiny=True")
        try:
            import triton
        except ImportError:
            report.fail("triton is not installed: torch.compile needs it on a GPU (it comes with torch's CUDA wheels)")
        if not torch.distributed.is_nccl_available():
            report.fail("this torch has no nccl: the torchrun step needs it")
        free, total = torch.cuda.mem_get_info(device)
        need = 1.0 if tiny else min_free_gb
        if free < need * 2**30:
            report.fail(f"{torch.cuda.get_device_name(device)} has {free / 2**30:.1f} GiB free of "
                        f"{total / 2**30:.1f}; the check needs {need:.0f} (stop what else runs on it)")
        where = f"{torch.cuda.get_device_name(device)} ({free / 2**30:.0f} GiB free), triton {triton.__version__}"
    else:
        if not any(shutil.which(cc) for cc in ('g++', 'c++', 'clang++')):
            report.fail("torch.compile on a CPU needs a C++ compiler (g++); install one or run with --tiny=False")
        where = f"{flops.cpu_name()}, {os.cpu_count()} cores"
    out_dirs.ensure_writable(report_dir, 'report_dir')
    out_dirs.ensure_writable(out_root, 'out_root')
    free_disk = shutil.disk_usage(out_root).free / 2**30
    if free_disk < 2:
        report.fail(f"{out_root} has {free_disk:.1f} GiB of disk free; the runs' checkpoints need 2")
    return (f"environment: torch {torch.__version__}, {where}, {data_dir} ({train_tokens:,} training tokens), "
            f"report in {report_dir}, runs in {out_root}, budget {budget_s} s")


environment = check_environment()
print(environment, flush=True)
log = open(os.path.join(report_dir, 'log.txt'), 'a')
log.write(f"\n# gpu_check {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv[1:])}\n{environment}\n")
recipe = [os.path.join(REPO, 'config', 'train_shakespeare_char.py'), f'--dataset={dataset}', f'--device={device}',
          '--eval_interval=50', '--eval_iters=20', '--log_interval=10', f'--max_iters={iters}']
gpt2 = ['--n_layer=12', '--n_head=12', '--n_embd=768', '--block_size=1024', '--batch_size=12']
shape = ['--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4']
classic_compiled = ['--dtype=bfloat16', '--compile=True']  # the bf16-compile step's and bench.py's training step's
if tiny:
    recipe += shape + ['--eval_iters=2', '--log_interval=5', '--eval_interval=10']
    # the recipe's model and batches (bench.py reads the dataset's vocabulary): its compiled kernels serve
    gpt2 = shape + ['--real_data=True', f'--dataset={dataset}']
    # on a CPU, float32 without dropout: the graphs tests/test_compile.py compiles, so that a test run's
    # Inductor cache compiles them once (the modern recipe's step still compiles bfloat16 and dropout)
    classic_compiled = ['--dtype=float32', '--dropout=0.0', '--compile=True']
rows = []


def add_row(**row):
    """One case's figures: into results.jsonl and table.md at once, so a check cut short keeps them."""
    rows.append(row)
    with open(os.path.join(report_dir, 'results.jsonl'), 'a') as f:
        f.write(json.dumps({**row, 'device': device, 'time': time.strftime('%Y-%m-%d %H:%M:%S')}) + '\n')
    write_report()


def write_report(passed=None):
    """table.md from the rows so far (after every step, so a check that stops early keeps them)."""
    show = lambda value, fmt: '' if value is None else format(value, fmt)
    lines = [f"{environment}\n", '| case | ms/iter | tokens/s | MFU | peak GPU GB | estimate GB | best val loss | '
             'seconds | note |', '| --- ' * 9 + '|']
    for row in rows:
        mfu = row.get('mfu')
        lines.append(f"| {row['case']} | {show(row.get('ms_per_iter'), '.1f')} | {show(row.get('tokens_per_s'), ',.0f')} "
                     f"| {show(mfu and mfu * 100, '.1f')}{'%' if mfu else ''} | {show(row.get('peak_gpu_gb'), '.2f')} | "
                     f"{show(row.get('memory_estimate_gb'), '.2f')} | {show(row.get('val_loss'), '.4f')} | "
                     f"{show(row.get('seconds'), '.1f')} | {row.get('note', '')} |")
    lines.append(f"\n{time.time() - started:.0f} s in all; " + ('all checks passed' if passed else
                                                               'stopped early' if passed is None else 'FAILED'))
    with open(os.path.join(report_dir, 'table.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return '\n'.join(lines)


def stop(message):
    """A failed step: its reason on stderr and in log.txt, the rows so far in table.md, exit status 1."""
    print(f"\nFAILED: {message}", file=sys.stderr, flush=True)
    log.write(f"FAILED: {message}\n")
    log.close()
    write_report(passed=False)
    sys.exit(1)


def launch(name, command):
    """Start a command in its own process group (so that torchrun's workers go with it), killed
    when the check's budget runs out."""
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    log.write(f"\n== {name}: {' '.join(command)}\n")
    log.flush()
    proc = scripts.start(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.out_of_time = threading.Event()

    def out_of_time():
        if proc.poll() is None:
            proc.out_of_time.set()
            os.killpg(proc.pid, signal.SIGKILL)

    proc.watchdog = threading.Timer(max(0.0, started + budget_s - time.time()), out_of_time)
    proc.watchdog.daemon = True
    proc.watchdog.start()
    return proc


def finish(name, proc, lines, expect=0):
    """Wait for a launched command; log its output; stop the check unless it exited with expect (None: any)."""
    output = ''.join(lines) + proc.communicate()[0]
    proc.watchdog.cancel()
    log.write(output + f"[exit {proc.returncode}]\n")
    log.flush()
    print('\n'.join(output.strip().splitlines()[-6:]), flush=True)
    if proc.out_of_time.is_set():
        stop(f"{name} was still running when the check's budget of {budget_s} s ran out (log.txt has its output)")
    if expect is not None and proc.returncode != expect:
        stop(f"{name} exited with {proc.returncode} (expected {expect}):\n{output[-4000:]}")
    return output


def run(name, command):
    start = time.time()
    return finish(name, launch(name, command), []), time.time() - start


def record_training(name, out_dir, seconds, after_iter=0, note=''):
    """A row of the table from a run's metrics.jsonl (a resumed run: its events after after_iter)."""
    events = [e for e in report.read_metrics(out_dir) if e['iter'] > after_iter or e['event'] == 'done']
    steps = report.steady_steps(events, after_iter)[1:]  # the first log line includes warm-up and compiling
    done = next((e for e in events if e['event'] == 'done'), {})
    add_row(case=name, ms_per_iter=statistics.median(e['ms_per_iter'] for e in steps) if steps else None,
            tokens_per_s=statistics.median(e['tokens_per_s'] for e in steps) if steps else None,
            mfu=steps[-1]['mfu'] if steps else None, peak_gpu_gb=done.get('peak_gpu_gb'),
            # train.py's estimate (memory.estimate_peak) beside torch's own peak: how far off it is on a GPU
            memory_estimate_gb=done.get('memory_estimate_gb'),
            val_loss=min((e['val_loss'] for e in events if e['event'] == 'eval'), default=None),
            seconds=round(seconds, 1), note=note)
    return events


def train(name, *args, out_dir=None, wrapper=(), after_iter=0):
    """train.py with the recipe and args, or the wrapper script (count_syncs.py) running it."""
    out_dir = os.path.join(out_root, out_dir or name)
    output, seconds = run(name, scripts.command(*wrapper, os.path.join(REPO, 'train.py'), *recipe,
                                                f'--out_dir={out_dir}', *args))
    notes = [line for line in output.splitlines() if line.startswith(('host syncs:', 'compile:'))]
    record_training(name, out_dir, seconds, after_iter, note='; '.join(notes))


def stop_at(name, command, when, expect=0):
    """Run a training command and send it SIGTERM (train.py saves and exits 0) at the first log line
    for which when(line) holds; returns the output and the iteration it stopped at, if it did."""
    proc = launch(name, command)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if when(line):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    output = finish(name, proc, lines, expect)
    stopped = re.search(r'stopped at iteration (\d+)', output)
    return output, int(stopped.group(1)) if stopped else None


if quick:
    count_syncs = (os.path.join(REPO, 'benchmarks', 'count_syncs.py'),)
    # 1. three dtypes: bfloat16 compiled and float16 with a GradScaler and Muon, each under the sync
    # counter, which fails if the step waits for the device (found_inf included)
    train('bf16-compile', *classic_compiled, wrapper=count_syncs)
    train('fp16-scaler-muon', '--dtype=float16', '--compile=False', '--optimizer=muon', wrapper=count_syncs)
    train('fp32-tf32', '--dtype=float32', '--compile=False')
    # 2. resume across dtypes: float32 -> float16 (a GradScaler without saved state), float16 -> bfloat16
    train('resume fp32->fp16', '--dtype=float16', '--compile=False', '--init_from=resume', f'--max_iters={iters + 20}',
          out_dir='fp32-tf32', after_iter=iters)
    train('resume fp16->bf16', '--dtype=bfloat16', '--compile=False', '--optimizer=muon', '--init_from=resume',
          f'--max_iters={iters + 20}', out_dir='fp16-scaler-muon', after_iter=iters)

    # 3. torchrun with one process (nccl on a GPU): SIGTERM mid-run saves, and the run resumes to the end
    torchrun_dir = os.path.join(out_root, 'torchrun')
    torchrun = scripts.command('train.py', *recipe, f'--out_dir={torchrun_dir}', '--dtype=bfloat16', '--compile=False',
                               '--eval_interval=100000', '--always_save_checkpoint=False', nproc=1)
    start = time.time()
    output, stopped_at = stop_at('torchrun, SIGTERM', torchrun + ['--max_iters=100000'],
                                 lambda line: line.startswith('iter ') and int(line.split()[1].split('/')[0]) >= 20,
                                 expect=None)  # torchrun itself exits 1 on SIGTERM; its worker saves and says so
    if stopped_at is None or not os.path.exists(os.path.join(torchrun_dir, 'last.pt')):
        stop(f"torchrun did not stop cleanly on SIGTERM:\n{output[-4000:]}")
    run('torchrun resume', torchrun + [f'--max_iters={stopped_at + 20}', '--init_from=resume'])
    record_training('torchrun stop+resume', torchrun_dir, time.time() - start, note=f'stopped at iteration {stopped_at}')

    # 4. sampling from the bfloat16 run: without the KV cache, with it, and with its one-token step compiled
    for case, args in (('sample no cache', ['--kv_cache=False']), ('sample kv_cache', ['--kv_cache=True']),
                       ('sample kv_cache compiled', ['--kv_cache=True', '--compile=True'])):
        _, seconds = run(case, scripts.command('sample.py', f"--out_dir={os.path.join(out_root, 'bf16-compile')}",
                                               f'--device={device}', '--num_samples=4', '--max_new_tokens=200', *args))
        add_row(case=case, seconds=round(seconds, 1))

    # 5. bench.py: the GPT-2 124M training step (bfloat16, compile) and generation
    bench_file = os.path.join(out_root, 'bench.jsonl')
    short = ['--bench_iters=3', '--warmup_iters=1', '--max_new_tokens=20', '--repeats=1'] if tiny else []
    for mode, args in (('train', classic_compiled), ('generate', ['--dtype=bfloat16'])):
        _, seconds = run(f'bench {mode}', scripts.command('bench.py', *gpt2, f'--device={device}', f'--mode={mode}',
                                                          f'--results_file={bench_file}', *args, *short))
        with open(bench_file) as f:
            record = [json.loads(line) for line in f][-1]
        if mode == 'train':
            add_row(case='bench GPT-2 shape train', ms_per_iter=record['median_ms'], seconds=round(seconds, 1),
                    tokens_per_s=record['tokens_per_s'], mfu=record['mfu'], peak_gpu_gb=record['peak_gpu_gb'])
        else:
            add_row(case='bench GPT-2 shape generate', tokens_per_s=record['kv_cache_tokens_per_s'],
                    seconds=round(seconds, 1), note=f"no cache {record['no_cache_tokens_per_s']} tok/s, "
                                                    f"logits within {record['max_logit_diff']:.2g}")

# 6. the whole recipe, classic and modern (config/modern.py), compiled: how long each takes to the target
# loss; each stops there (or when its share of the budget is spent), to spare the GPU's minutes
def reaches_target(line):
    match = re.match(r'step \d+: .*val loss ([\d.]+)', line)
    return bool(match) and float(match.group(1)) <= target_loss


if full:
    for name, modern in (('full recipe bf16-compile', []), ('full modern recipe bf16-compile', ['config/modern.py'])):
        out_dir = os.path.join(out_root, 'full-modern' if modern else 'full')
        configs = [os.path.join(REPO, 'config', 'train_shakespeare_char.py')] + [os.path.join(REPO, c) for c in modern]
        small = [*shape, f'--max_iters={iters}', '--eval_iters=2', '--eval_interval=5', '--log_interval=2'] \
            if tiny else []
        # the classic recipe gets half of what is left, the modern one the rest, less time to save and exit
        share_ends = time.time() + (started + budget_s - time.time()) / (1 if modern else 2) - 15
        # on a CPU the classic recipe's graphs are step 1's, compiled already: only the modern one's are new
        compiled = [] if tiny and not modern else ['--compile=True']
        start = time.time()
        output, stopped_at = stop_at(name, scripts.command('train.py', *configs, f'--dataset={dataset}',
                                                           f'--device={device}', *compiled, f'--out_dir={out_dir}', *small),
                                     lambda line: reaches_target(line) or time.time() > share_ends)
        events = [e for e in report.read_metrics(out_dir) if e['event'] == 'eval']
        hit = [e for e in events if e['val_loss'] <= target_loss]
        note = (f"val <= {target_loss} at iteration {hit[0]['iter']}, {hit[0]['time'] - events[0]['time']:.0f} s after "
                f"the first evaluation" if hit else f"val loss never reached {target_loss}" +
                (f" (stopped at iteration {stopped_at}: its share of the budget was spent)" if stopped_at else ''))
        record_training(name, out_dir, time.time() - start, note=note)

log.close()
print('\n' + write_report(passed=True))
