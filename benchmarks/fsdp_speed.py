"""
FSDP against DDP on the same devices: train.py's tokens/s for a GPT-2 shape under torchrun, the two
in alternation, and, with --largest=True, which GPT-2 shapes train at all with each.

$ python benchmarks/fsdp_speed.py                                  # one GPU, GPT-2 124M, bfloat16, compile
$ python benchmarks/fsdp_speed.py --nproc=8 --largest=True         # 8 GPUs, and then medium, large, xl
$ python benchmarks/fsdp_speed.py --device=cpu --shape=tiny --iters=20 --compile=False   # the steps, on a CPU

The data is random GPT-2 token ids (a vocabulary of 50304, as train.py uses without meta.pkl), in a
temporary folder. Runs use learning_rate=0, so the val loss never improves and no checkpoint is
written (a GPT-2 XL one is 18 GB); a step costs the same. tokens/s is the median of a run's log
lines after the first (which holds the warm-up and compiling), and the figure per mode the median
over rounds. Peak GPU memory is rank 0's. One JSON line per run goes to results_file.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import report  # noqa: E402
from configurator import configure  # noqa: E402

nproc = 1  # torchrun processes (GPUs)
device = 'cuda'
dtype = 'auto'
compile = 'auto'
shape = 'gpt2'  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, or tiny
batch_size = 12  # sequences per micro-step, as config/train_gpt2.py
gradient_accumulation_steps = 0  # 0: 2 micro-steps per process
rounds = 3  # alternating DDP, FSDP rounds for the speed comparison
iters = 50  # iterations per speed run
largest = False  # also try every GPT-2 shape with each mode (iters 10, largest_batch sequences)
largest_batch = 4
results_file = 'bench_results.jsonl'
configure(globals())

SHAPES = {'tiny': (2, 2, 16, 16), 'gpt2': (12, 12, 768, 1024), 'gpt2-medium': (24, 16, 1024, 1024),
          'gpt2-large': (36, 20, 1280, 1024), 'gpt2-xl': (48, 25, 1600, 1024)}
train_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py')
work = tempfile.mkdtemp(prefix='fsdp_speed_')
os.makedirs(os.path.join(work, 'data', 'random'))
for split in ('train', 'val'):
    np.random.default_rng(0).integers(0, 50257, 4_000_000, dtype=np.uint16).tofile(
        os.path.join(work, 'data', 'random', f'{split}.bin'))


def train(mode, shape_name, n_iters, batch):
    n_layer, n_head, n_embd, block = SHAPES[shape_name]
    out_dir = os.path.join(work, f'out-{mode}')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', train_py,
               '--dataset=random', f'--out_dir={out_dir}', f'--n_layer={n_layer}', f'--n_head={n_head}',
               f'--n_embd={n_embd}', f'--block_size={block}', f'--batch_size={batch}',
               f'--gradient_accumulation_steps={gradient_accumulation_steps or 2 * nproc}', f'--max_iters={n_iters}',
               '--eval_iters=1', '--eval_interval=100000', '--log_interval=5', '--learning_rate=0', '--decay_lr=False',
               f'--device={device}', f'--dtype={dtype}', f'--compile={compile}', f'--fsdp={mode == "fsdp"}']
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    events = report.read_metrics(out_dir) if os.path.exists(os.path.join(out_dir, 'metrics.jsonl')) else []
    steps = [e['tokens_per_s'] for e in events if e['event'] == 'train'][1:]
    done = next((e for e in events if e['event'] == 'done'), {})
    row = dict(bench='fsdp_speed', mode=mode, shape=shape_name, nproc=nproc, batch_size=batch, device=device,
               ok=result.returncode == 0, tokens_per_s=statistics.median(steps) if steps else None,
               peak_gpu_gb=done.get('peak_gpu_gb'), peak_rss_gb=done.get('peak_rss_gb'),
               error=None if result.returncode == 0 else next(
                   (line for line in result.stderr.splitlines() if 'out of memory' in line.lower() or 'error:' in line),
                   (result.stderr.strip().splitlines() or ['?'])[-1])[:200])
    with open(results_file, 'a') as f:
        f.write(json.dumps(row) + '\n')
    print(json.dumps(row), flush=True)
    return row


try:
    speeds = {'ddp': [], 'fsdp': []}
    for _ in range(rounds):
        for mode in speeds:
            row = train(mode, shape, iters, batch_size)
            if not row['ok']:
                sys.exit(f"{mode} failed: {row['error']}")
            speeds[mode].append(row['tokens_per_s'])
    ddp, fsdp = statistics.median(speeds['ddp']), statistics.median(speeds['fsdp'])
    print(f"\n{shape}, {nproc} process(es) on {device}, batch {batch_size}: DDP {ddp:,.0f} tokens/s, FSDP {fsdp:,.0f} "
          f"tokens/s (FSDP/DDP {fsdp / ddp:.3f}; medians of {rounds} rounds)")
    if largest:
        print(f"\n| shape | DDP | FSDP |  (batch {largest_batch} x 1024, {nproc} process(es); peak GPU GB or the error)\n"
              "| --- | --- | --- |")
        for name in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'):
            rows = [train(mode, name, 10, largest_batch) for mode in ('ddp', 'fsdp')]
            print(f"| {name} | " + ' | '.join(f"{r['peak_gpu_gb']} GB" if r['ok'] else f"fails: {r['error']}"
                                              for r in rows) + ' |', flush=True)
finally:
    shutil.rmtree(work)
