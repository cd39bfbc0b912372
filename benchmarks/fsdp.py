"""
FSDP against DDP: how much memory each rank saves, and what it costs in speed.

$ python benchmarks/fsdp.py --measure=memory                      # CPU processes (gloo): 1, 2 and 4
$ python benchmarks/fsdp.py --measure=memory --nproc=1,8 --device=cuda   # GPUs of one machine (nccl)
$ python benchmarks/fsdp.py --measure=speed                       # one GPU, GPT-2 124M, bfloat16, compile
$ python benchmarks/fsdp.py --measure=speed --nproc=8 --largest=True     # 8 GPUs, then medium, large, xl
$ python benchmarks/fsdp.py --measure=speed --device=cpu --shape=tiny --iters=20 --compile=False

memory: the bytes of parameters, gradients and AdamW state each torchrun process holds after one
training step of the shape, counted from the tensors themselves (under FSDP each rank's local
shards). Each configuration is one `torchrun --standalone` of this script, whose workers measure
(the worker setting says which parallelism). A step is one micro-batch of batch_size x tokens:
activations are not what is measured, and stay small. Not counted: DDP's gradient buckets
(another gradient-sized buffer), FSDP's all-gathered block of the moment, activations and torch
itself. The JSON lines (one per rank) also hold each rank's peak resident memory, and peak GPU
memory on CUDA; on a CPU every rank builds the whole model before it is sharded, so that peak says
little. The table shows the largest rank.

speed: train.py's tokens/s for the shape under torchrun, DDP and FSDP in alternation over rounds,
on random GPT-2 token ids (a vocabulary of 50304) in a temporary folder; with --largest=True also
which GPT-2 shapes train at all with each. Runs use learning_rate=0, so the val loss never
improves and no checkpoint is written (a GPT-2 XL one is 18 GB); a step costs the same. tokens/s
is the median of a run's log lines after the first (warm-up and compiling), and the figure per
mode the median over rounds. Peak GPU memory is rank 0's. One JSON line per run goes to
results_file.
"""
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import distributed, flops, memory, report, runtime  # noqa: E402
from configurator import configure  # noqa: E402
from model import GPT, GPT2_SHAPES, GPTConfig  # noqa: E402
from scripts import run_script  # noqa: E402  (benchmarks/scripts.py, beside this one)

measure = 'memory'  # 'memory' (bytes per rank, counted) or 'speed' (train.py's tokens/s)
nproc = ''  # torchrun process counts, comma-separated; '': 1,2,4 for memory, 1 for speed
device = ''  # '': cpu (gloo) for memory, cuda for speed
shape = 'gpt2'  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, or tiny
modes = 'ddp,fsdp'
# memory
batch_size_memory, tokens = 1, 64  # the step's one micro-batch
worker = ''  # set by the launcher for its torchrun workers: 'ddp' or 'fsdp'
# speed
dtype = 'auto'
compile = 'auto'
batch_size = 12  # sequences per micro-step, as config/train_gpt2.py
gradient_accumulation_steps = 0  # 0: 2 micro-steps per process
rounds = 3  # alternating DDP, FSDP rounds
iters = 50  # iterations per run
largest = False  # also try every GPT-2 shape with each mode (10 iterations, largest_batch sequences)
largest_batch = 4
results_file = 'bench_results.jsonl'
configure(globals())

if measure not in ('memory', 'speed'):
    report.fail(f"measure must be 'memory' or 'speed', not {measure!r}")
SHAPES = {'tiny': (2, 2, 16, 16), **{name: (*shape, 1024) for name, shape in GPT2_SHAPES.items()}}
if shape not in SHAPES:
    report.fail(f"shape must be one of {', '.join(SHAPES)}, not {shape!r}")
process_counts = [int(n) for n in (nproc or ('1,2,4' if measure == 'memory' else '1')).split(',')]
device = device or ('cpu' if measure == 'memory' else 'cuda')
cpu = flops.cpu_name()


def tensor_bytes(tensors):
    return sum(distributed.local(t).numel() * t.element_size() for t in tensors if t is not None)


if worker:  # a torchrun worker of --measure=memory
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    rt = runtime.setup_runtime(device, 'float32', False, 'auto', 1337, onednn=False)
    n_layer, n_head, n_embd, block_size = SHAPES[shape]
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=50304,
                          bias=False, dropout=0.0))
    if worker == 'fsdp':
        trained = distributed.shard(model, rt)
    else:
        trained = DDP(model.to(rt.device), device_ids=[rt.local_rank] if rt.device_type == 'cuda' else None)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), rt.device_type)
    x = torch.randint(50304, (batch_size_memory, min(tokens, block_size) + 1), device=rt.device)
    trained(x[:, :-1], x[:, 1:])[1].backward()
    optimizer.step()  # the gradients stay, to be counted
    params = list(model.parameters())
    row = {
        'bench': 'fsdp_memory', 'mode': worker, 'world_size': rt.world_size, 'rank': rt.rank, 'device': rt.device_type,
        'shape': shape, 'params_bytes': tensor_bytes(params), 'grads_bytes': tensor_bytes(p.grad for p in params),
        'optimizer_bytes': tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                                        if isinstance(v, torch.Tensor)),
        **memory.peak_memory_gb(rt)}
    rows = distributed.gather_from_ranks(row, rt)  # rank 0 prints them all: lines from several processes would mix
    if rt.master:
        print('\n'.join(map(json.dumps, rows)), flush=True)
    # DDP sits in reference cycles with the last backward's graph: freed first, as train.py does, or
    # gloo can abort a rank at exit
    trained = model = optimizer = None
    gc.collect()
    distributed.leave_group(rt)
    sys.exit(0)


if measure == 'memory':
    print(f"{shape} shape ({SHAPES[shape][0]} layers, {SHAPES[shape][2]} wide, vocabulary 50304); {device}: {cpu}")
    print("| processes | mode | parameters MiB | gradients MiB | AdamW state MiB | total MiB per rank | vs the first |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    alone = {}
    for n in process_counts:
        for mode in modes.split(','):
            result = run_script('benchmarks/fsdp.py', f'--worker={mode}', f'--device={device}', f'--shape={shape}',
                                f'--batch_size_memory={batch_size_memory}', f'--tokens={tokens}', nproc=n,
                                env=dict(OMP_NUM_THREADS='1'), check=False)
            rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
            if result.returncode != 0 or len(rows) != n:
                sys.exit(f"{mode} with {n} processes failed:\n{result.stderr[-3000:]}")
            with open(results_file, 'a') as f:
                f.writelines(json.dumps({**row, 'cpu': cpu}) + '\n' for row in rows)
            counted = lambda r: r['params_bytes'] + r['grads_bytes'] + r['optimizer_bytes']  # noqa: E731
            top = max(rows, key=counted)
            alone.setdefault(mode, counted(top))
            mb = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
            print(f"| {n} | {mode.upper()} | {mb(top['params_bytes'])} | {mb(top['grads_bytes'])} | "
                  f"{mb(top['optimizer_bytes'])} | {mb(counted(top))} | {counted(top) / alone[mode]:.3f} |", flush=True)
    sys.exit(0)

# --measure=speed
work = tempfile.mkdtemp(prefix='fsdp_speed_')
os.makedirs(os.path.join(work, 'data', 'random'))
for split in ('train', 'val'):
    np.random.default_rng(0).integers(0, 50257, 4_000_000, dtype=np.uint16).tofile(
        os.path.join(work, 'data', 'random', f'{split}.bin'))


def train(mode, n, shape_name, n_iters, batch):
    n_layer, n_head, n_embd, block = SHAPES[shape_name]
    out_dir = os.path.join(work, f'out-{mode}')
    # a shape too large for the device fails: that is a result, recorded, not the benchmark's end
    result = run_script('train.py', '--dataset=random', f'--out_dir={out_dir}', f'--n_layer={n_layer}',
                        f'--n_head={n_head}', f'--n_embd={n_embd}', f'--block_size={block}', f'--batch_size={batch}',
                        f'--gradient_accumulation_steps={gradient_accumulation_steps or 2 * n}',
                        f'--max_iters={n_iters}', '--eval_iters=1', '--eval_interval=100000', '--log_interval=5',
                        '--learning_rate=0', '--decay_lr=False', f'--device={device}', f'--dtype={dtype}',
                        f'--compile={compile}', f'--fsdp={mode == "fsdp"}', cwd=work, nproc=n, check=False)
    events = report.read_metrics(out_dir) if os.path.exists(os.path.join(out_dir, 'metrics.jsonl')) else []
    steps = [e['tokens_per_s'] for e in events if e['event'] == 'train'][1:]
    done = next((e for e in events if e['event'] == 'done'), {})
    row = dict(bench='fsdp_speed', mode=mode, shape=shape_name, nproc=n, batch_size=batch, device=device,
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
    for n in process_counts:
        speeds = {mode: [] for mode in modes.split(',')}
        for _ in range(rounds):
            for mode in speeds:
                row = train(mode, n, shape, iters, batch_size)
                if not row['ok']:
                    sys.exit(f"{mode} failed: {row['error']}")
                speeds[mode].append(row['tokens_per_s'])
        ddp, fsdp = statistics.median(speeds['ddp']), statistics.median(speeds['fsdp'])
        print(f"\n{shape}, {n} process(es) on {device}, batch {batch_size}: DDP {ddp:,.0f} tokens/s, FSDP {fsdp:,.0f} "
              f"tokens/s (FSDP/DDP {fsdp / ddp:.3f}; medians of {rounds} rounds)")
        if largest:
            print(f"\n| shape | DDP | FSDP |  (batch {largest_batch} x 1024, {n} process(es); peak GPU GB or the error)\n"
                  "| --- | --- | --- |")
            for name in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'):
                rows = [train(mode, n, name, 10, largest_batch) for mode in ('ddp', 'fsdp')]
                print(f"| {name} | " + ' | '.join(f"{r['peak_gpu_gb']} GB" if r['ok'] else f"fails: {r['error']}"
                                                  for r in rows) + ' |', flush=True)
finally:
    shutil.rmtree(work)
