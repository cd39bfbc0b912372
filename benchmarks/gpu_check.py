"""
Check the whole GPU path in one go and record its figures (benchmarks/gpu_check.sh runs this):
train.py on shakespeare_char in bfloat16 + compile (with every host sync counted), in float16 with a
GradScaler and in float32 (TF32); a resume across dtypes; torchrun with nccl, stopped by SIGTERM and
resumed; sample.py with and without the KV cache; bench.py's training step for the GPT-2 124M shape
(bfloat16, compile) and its generation. Any failure stops it with the failing command's output.
It ends with one table: ms/iter, tokens/s, MFU and peak GPU memory per case, also written as JSON
lines to results_file.

$ bash benchmarks/gpu_check.sh                          # one GPU, a few minutes
$ bash benchmarks/gpu_check.sh --full=True              # and the whole recipe, classic and modern, to val 1.47
$ bash benchmarks/gpu_check.sh --quick=False --full=True   # just the whole recipes (after a plain check)
$ python benchmarks/gpu_check.py --device=cpu --tiny=True   # the same steps, tiny shapes, on a CPU

Run it from the repo root with data/shakespeare_char prepared.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import errors  # noqa: E402
import report  # noqa: E402
from configurator import configure  # noqa: E402

device = 'cuda'
tiny = False  # tiny shapes and few iterations, so the check itself runs in the test suite on a CPU
quick = True  # steps 1-5 below, a few minutes; False with --full=True: just the whole recipes
full = False  # also train the whole shakespeare_char recipe, classic and modern, timing each to val loss <= 1.47
iters = 100  # iterations per training case
dataset = 'shakespeare_char'
out_root = 'out-gpu-check'
results_file = 'gpu_check.jsonl'
configure(globals())

on_gpu = device.startswith('cuda')
python = sys.executable
recipe = [os.path.join(REPO, 'config', 'train_shakespeare_char.py'), f'--dataset={dataset}', f'--device={device}',
          '--eval_interval=50', '--eval_iters=20', '--log_interval=10', f'--max_iters={iters}']
gpt2 = ['--n_layer=12', '--n_head=12', '--n_embd=768', '--block_size=1024', '--batch_size=12']
if tiny:
    shape = ['--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4']
    recipe += shape + ['--eval_iters=2', '--log_interval=5', '--eval_interval=10']
    gpt2 = shape + ['--vocab_size=65']
if not os.path.exists(os.path.join('data', dataset, 'train.bin')):
    errors.fail(f"data/{dataset} is not prepared; run python data/{dataset}/prepare.py first")
rows = []


def run(name, command, expect=0, **kwargs):
    """Run a command, echo its last lines, and stop everything (exit 1) if its status is not expect."""
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    print('\n'.join((result.stdout + result.stderr).strip().splitlines()[-6:]), flush=True)
    if result.returncode != expect:
        print(f"\nFAILED: {name} exited with {result.returncode} (expected {expect})\n{result.stderr[-4000:]}",
              file=sys.stderr, flush=True)
        sys.exit(1)
    return result, time.time() - start


def train(name, *args, out_dir=None, wrapper=(), after_iter=0):
    out_dir = os.path.join(out_root, out_dir or name)
    result, seconds = run(name, [python, *wrapper, os.path.join(REPO, 'train.py'), *recipe, f'--out_dir={out_dir}', *args])
    record_training(name, out_dir, seconds, after_iter)
    syncs = [line for line in result.stderr.splitlines() if line.startswith('host syncs:')]
    if syncs:
        rows[-1]['note'] = syncs[0]


def record_training(name, out_dir, seconds, after_iter=0):
    """A row of the table from a run's metrics.jsonl (a resumed run: its events after after_iter)."""
    events = [e for e in report.read_metrics(out_dir) if e['iter'] > after_iter or e['event'] == 'done']
    steps = report.steady_steps(events, after_iter)[1:]  # the first log line includes warm-up and compiling
    done = next((e for e in events if e['event'] == 'done'), {})
    rows.append(dict(case=name, ms_per_iter=statistics.median(e['ms_per_iter'] for e in steps) if steps else None,
                     tokens_per_s=statistics.median(e['tokens_per_s'] for e in steps) if steps else None,
                     mfu=steps[-1]['mfu'] if steps else None, peak_gpu_gb=done.get('peak_gpu_gb'),
                     val_loss=min((e['val_loss'] for e in events if e['event'] == 'eval'), default=None),
                     seconds=round(seconds, 1)))
    return events


compile_first = 'True' if on_gpu else 'False'  # compiling on a CPU takes minutes; the CPU run checks the rest
if quick:
    # 1. three dtypes; the first under the sync counter, which fails if the step waits for the device
    train('bf16-compile', '--dtype=bfloat16', f'--compile={compile_first}',
          wrapper=(os.path.join(REPO, 'benchmarks', 'count_syncs.py'),))
    train('fp16-scaler', '--dtype=float16', '--compile=False')
    train('fp32-tf32', '--dtype=float32', '--compile=False')
    # 2. resume across dtypes: float32 -> float16 (a GradScaler without saved state), float16 -> bfloat16
    train('resume fp32->fp16', '--dtype=float16', '--compile=False', '--init_from=resume', f'--max_iters={iters + 20}',
          out_dir='fp32-tf32', after_iter=iters)
    train('resume fp16->bf16', '--dtype=bfloat16', '--compile=False', '--init_from=resume', f'--max_iters={iters + 20}',
          out_dir='fp16-scaler', after_iter=iters)

    # 3. torchrun with one process (nccl on a GPU): SIGTERM mid-run saves, and the run resumes to the end
    torchrun_dir = os.path.join(out_root, 'torchrun')
    torchrun = [python, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
                os.path.join(REPO, 'train.py'), *recipe, f'--out_dir={torchrun_dir}', '--dtype=bfloat16',
                '--compile=False', '--eval_interval=100000', '--always_save_checkpoint=False']
    print(f"\n== torchrun, SIGTERM, resume: {' '.join(torchrun)}", flush=True)
    start = time.time()
    # unbuffered: the SIGTERM must land near iteration 20, not when an 8 KB buffer of log lines fills
    proc = subprocess.Popen(torchrun + ['--max_iters=100000'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('iter ') and int(line.split()[1].split('/')[0]) >= 20:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    log = ''.join(lines) + rest
    if 'stopped at iteration' not in log or not os.path.exists(os.path.join(torchrun_dir, 'last.pt')):
        print(f"FAILED: torchrun did not stop cleanly on SIGTERM (exit {proc.returncode})\n{log[-4000:]}",
              file=sys.stderr)
        sys.exit(1)
    stopped_at = int(log.split('stopped at iteration ')[1].split(';')[0])
    print(f"stopped at iteration {stopped_at} (exit {proc.returncode}); resuming", flush=True)
    run('torchrun resume', torchrun + [f'--max_iters={stopped_at + 20}', '--init_from=resume'])
    record_training('torchrun stop+resume', torchrun_dir, time.time() - start)

    # 4. sampling from the bfloat16 run, with and without the KV cache
    for kv_cache in (True, False):
        bf16_run = os.path.join(out_root, 'bf16-compile')
        _, seconds = run(f'sample kv_cache={kv_cache}',
                         [python, os.path.join(REPO, 'sample.py'), f'--out_dir={bf16_run}',
                          f'--device={device}', '--num_samples=4', '--max_new_tokens=200', f'--kv_cache={kv_cache}'])
        rows.append(dict(case=f'sample kv_cache={kv_cache}', seconds=round(seconds, 1)))

    # 5. bench.py: the GPT-2 124M training step (bfloat16, compile) and generation
    bench_file = os.path.join(out_root, 'bench.jsonl')
    short = ['--bench_iters=3', '--warmup_iters=1', '--max_new_tokens=20', '--repeats=1'] if tiny else []
    for mode, args in (('train', ['--dtype=bfloat16', f'--compile={compile_first}']),
                       ('generate', ['--dtype=bfloat16'])):
        run(f'bench {mode}', [python, os.path.join(REPO, 'bench.py'), *gpt2, f'--device={device}', f'--mode={mode}',
                              f'--results_file={bench_file}', *args, *short])
        with open(bench_file) as f:
            record = [json.loads(line) for line in f][-1]
        if mode == 'train':
            rows.append(dict(case='bench GPT-2 shape train', ms_per_iter=record['median_ms'],
                             tokens_per_s=record['tokens_per_s'], mfu=record['mfu'], peak_gpu_gb=record['peak_gpu_gb']))
        else:
            rows.append(dict(case='bench GPT-2 shape generate', tokens_per_s=record['kv_cache_tokens_per_s'],
                             note=f"no cache {record['no_cache_tokens_per_s']} tok/s, "
                                  f"logits within {record['max_logit_diff']:.2g}"))

# 6. optionally, the whole recipe, classic and modern (config/modern.py): how long each takes to val loss 1.47
if full:
    for name, modern in (('full recipe bf16-compile', []), ('full modern recipe bf16-compile', ['config/modern.py'])):
        out_dir = os.path.join(out_root, 'full-modern' if modern else 'full')
        configs = [os.path.join(REPO, 'config', 'train_shakespeare_char.py')] + [os.path.join(REPO, c) for c in modern]
        small = [*shape, f'--max_iters={iters}', '--eval_iters=2', '--eval_interval=5', '--log_interval=2'] \
            if tiny else []
        _, seconds = run(name, [python, os.path.join(REPO, 'train.py'), *configs, f'--dataset={dataset}',
                                f'--device={device}', f'--out_dir={out_dir}', *small])
        events = record_training(name, out_dir, seconds)
        start = next(e['time'] for e in events if e['event'] == 'eval')
        reached = [e for e in events if e['event'] == 'eval' and e['val_loss'] <= 1.47]
        rows[-1]['note'] = (f"val <= 1.47 at iteration {reached[0]['iter']}, {reached[0]['time'] - start:.0f} s after "
                            f"the first evaluation" if reached else "val loss never reached 1.47")

with open(results_file, 'a') as f:
    for row in rows:
        f.write(json.dumps({**row, 'device': device, 'time': time.strftime('%Y-%m-%d %H:%M:%S')}) + '\n')
show = lambda value, fmt: '' if value is None else format(value, fmt)
print(f"\n| case | ms/iter | tokens/s | MFU | peak GPU GB | best val loss | seconds | note |\n{'| --- ' * 8}|")
for row in rows:
    mfu = row.get('mfu')
    print(f"| {row['case']} | {show(row.get('ms_per_iter'), '.1f')} | {show(row.get('tokens_per_s'), ',.0f')} | "
          f"{show(mfu and mfu * 100, '.1f')}{'%' if mfu else ''} | {show(row.get('peak_gpu_gb'), '.2f')} | "
          f"{show(row.get('val_loss'), '.4f')} | {show(row.get('seconds'), '.1f')} | {row.get('note', '')} |")
print(f"\nall checks passed; rows appended to {results_file}")
