"""
train.py's memory estimate against the memory a run takes, on the CPU, and what activation
checkpointing saves and costs there.

$ python benchmarks/memory_estimate.py                 # the four cases, 3 iterations each (~10 min on 2 cores)
$ python benchmarks/memory_estimate.py --max_iters=6 --rounds=2
$ python benchmarks/memory_estimate.py --shape=gpt2 --batch_size=4   # GPT-2 124M's blocks: LoRA against full

The issue's shape: config/train_shakespeare_char.py (6 layers x 384, block 256, dropout 0.2) with
batch 32, float32, no compile. Four cases: plain; activation_checkpointing=True; LoRA rank 4
(finetuning the plain run's out_dir); FSDP over 2 processes under torchrun (gloo).

Two measurements per case, each against the estimate (memory.estimate_peak):
- peak resident memory: train.py on tiny Shakespeare (prepared as data/shakespeare_char/prepare.py
  does it, in a temporary folder), its 'done' event's peak_rss_gb (rank 0's under torchrun) beside
  its memory_estimate_gb, whose 'torch' part is the process's resident memory besides the model
  when the estimate is made. It also holds what glibc keeps of the freed heap (blocks under 32
  MiB, memory.keep_freed_memory), which grows from step to step and which the estimate leaves out.
- peak memory in use: the same model, settings and steps in a process of this script (random
  token ids: the values change nothing), with glibc's bytes in use (mallinfo2: heap and mmap)
  read after every op; the peak over the steps less the bytes in use before the model was
  built, against the estimate without its 'torch' part. This is the CPU's counterpart of
  torch.cuda.max_memory_allocated, which benchmarks/gpu_check.py compares the estimate with.
Plain and checkpointed runs alternate over rounds; their step time is the median ms/iter of
train.py's 'train' events after each run's first (warm-up).
"""
import ctypes
import json
import os
import shutil
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import distributed, flops, lora, memory, report, runtime  # noqa: E402
from configurator import configure  # noqa: E402
from model import GPT2_SHAPES  # noqa: E402
from scripts import run_script  # noqa: E402  (benchmarks/scripts.py, beside this one)

input = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
batch_size = 32
max_iters = 3
rounds = 1  # plain and activation-checkpointed runs, alternating
shape = 'shakespeare'  # 'gpt2': GPT-2 124M's 12 blocks of 768 (the vocabulary still Shakespeare's 65 characters)
worker = ''  # set for this script's own processes: the case whose memory in use they measure
results_file = 'bench_results.jsonl'
configure(globals())
if max_iters < 2 or rounds < 1 or batch_size < 1 or shape not in ('shakespeare', 'gpt2'):
    report.fail(f"max_iters takes 2 or more (ms/iter is timed after the first step), rounds and batch_size 1 or "
                f"more, shape 'shakespeare' or 'gpt2' (got {max_iters}, {rounds}, {batch_size}, {shape!r})")

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2, bias=False)
if shape == 'gpt2':
    SHAPE.update(zip(('n_layer', 'n_head', 'n_embd'), GPT2_SHAPES['gpt2']))
CASES = {'plain': [], 'activation checkpointing': ['--activation_checkpointing=True'],
         'LoRA rank 4': ['--lora_rank=4'], 'FSDP, 2 processes': ['--fsdp=True']}


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                 'keepcost')]


def bytes_in_use_reader():
    """A function that returns the bytes glibc has handed out and not had back (heap and mmap)."""
    try:
        mallinfo2 = ctypes.CDLL('libc.so.6').mallinfo2
    except (OSError, AttributeError):
        report.fail("measuring memory in use needs glibc 2.33 or later (mallinfo2)")
    mallinfo2.restype = MallInfo2

    def in_use():
        info = mallinfo2()
        return info.uordblks + info.hblkhd
    return in_use


def measure_in_use(case):
    """This process trains the case max_iters steps; its estimate and peak bytes in use (rank 0 prints them)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from model import GPT, GPTConfig
    in_use = bytes_in_use_reader()
    fsdp = case == 'FSDP, 2 processes'
    rt = runtime.setup_runtime('cpu', 'float32', False, onednn=False)
    before = in_use()
    model = GPT(GPTConfig(**SHAPE))
    if case == 'LoRA rank 4':  # only 'scratch' is refused: random weights take the memory trained ones do
        lora.attach(model, 4, 16.0, 0.0, ','.join(lora.LINEARS), init_from='gpt2', say=False)
    estimate = memory.estimate_peak(model, batch_size, SHAPE['block_size'], 'float32', 'cpu', 'adamw', rt.world_size,
                                    fsdp, case == 'activation checkpointing')
    if fsdp:
        distributed.shard(model, rt)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')
    if case == 'activation checkpointing':
        memory.recompute_activations(model)
    peak = [0]

    class PeakInUse(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            peak[0] = max(peak[0], in_use())
            return result

    ids = torch.randint(SHAPE['vocab_size'], (batch_size, SHAPE['block_size'] + 1))
    with PeakInUse():
        for _ in range(max_iters):
            model(ids[:, :-1], ids[:, 1:])[1].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if rt.master:
        print(json.dumps({'estimate_without_torch_gb': (estimate['total'] - estimate['torch']) / 2**30,
                          'in_use_gb': (peak[0] - before) / 2**30}), flush=True)
    if rt.ddp:
        distributed.leave_group(rt)


if worker:
    measure_in_use(worker)
    sys.exit(0)

if not os.path.exists(input):
    report.fail(f"no corpus at {input}; pass --input=PATH to tiny Shakespeare")
work = tempfile.mkdtemp(prefix='memory_estimate_')
TRAIN = [os.path.join(REPO, 'config', 'train_shakespeare_char.py'), '--device=cpu', '--compile=False',
         f'--batch_size={batch_size}', f'--max_iters={max_iters}', '--eval_iters=1', '--log_interval=1',
         *(f'--{k}={SHAPE[k]}' for k in ('n_layer', 'n_head', 'n_embd'))]


def train(case, out_dir, *args):
    """One run of train.py at the shape: its 'done' event and its ms/iter after the first step."""
    fsdp = case == 'FSDP, 2 processes'
    # under FSDP each process does one of the two micro-steps: the same batch per process as alone
    run_script('train.py', *TRAIN, f'--out_dir={out_dir}', *CASES[case], *args,
               *(['--gradient_accumulation_steps=2'] if fsdp else []), cwd=work, nproc=2 if fsdp else None)
    events = report.read_metrics(os.path.join(work, out_dir))
    done = next(e for e in events if e['event'] == 'done')
    return done, [e['ms_per_iter'] for e in events if e['event'] == 'train'][1:]


try:
    run_script('data/shakespeare_char/prepare.py', f'--input_file={os.path.abspath(input)}',
               '--out_dir=data/shakespeare_char', cwd=work)
    runs = {case: [] for case in CASES}
    for round_index in range(rounds):
        for case in ('plain', 'activation checkpointing'):
            runs[case].append(train(case, f'out-{round_index}-{case[:5]}'))
    runs['LoRA rank 4'].append(train('LoRA rank 4', 'out-lora', '--init_from=out-0-plain'))
    runs['FSDP, 2 processes'].append(train('FSDP, 2 processes', 'out-fsdp'))
finally:
    shutil.rmtree(work)
in_use = {}
for case in CASES:
    result = run_script('benchmarks/memory_estimate.py', f'--worker={case}', f'--batch_size={batch_size}',
                        f'--max_iters={max_iters}', f'--shape={shape}', nproc=2 if case.startswith('FSDP') else None)
    in_use[case] = json.loads(result.stdout.strip().splitlines()[-1])
    print(case, {'train.py': runs[case], 'in use': in_use[case]}, flush=True)

cpu = flops.cpu_name()
print(f"\n{cpu}; config/train_shakespeare_char.py, {SHAPE['n_layer']} x {SHAPE['n_embd']}, batch {batch_size}, "
      f"{max_iters} iterations, float32; "
      f"medians of {rounds} round(s)")
print("| case | estimate GB | peak resident GB | ratio | estimate without torch GB | peak in use GB | ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
rows = {}
for case, results in runs.items():
    estimate = statistics.median(done['memory_estimate_gb'] for done, _ in results)
    resident = statistics.median(done['peak_rss_gb'] for done, _ in results)
    rows[case] = dict(estimate_gb=estimate, peak_rss_gb=resident, **in_use[case],
                      ms_per_iter=statistics.median(ms for _, steps in results for ms in steps))
    without_torch, in_use_gb = in_use[case]['estimate_without_torch_gb'], in_use[case]['in_use_gb']
    print(f"| {case} | {estimate:.2f} | {resident:.2f} | {estimate / resident:.2f} | {without_torch:.2f} "
          f"| {in_use_gb:.2f} | {without_torch / in_use_gb:.2f} |")
plain, checkpointed = rows['plain'], rows['activation checkpointing']
print(f"\nactivation checkpointing: peak resident {checkpointed['peak_rss_gb']:.2f} GB against "
      f"{plain['peak_rss_gb']:.2f} ({checkpointed['peak_rss_gb'] / plain['peak_rss_gb']:.2f}x), in use "
      f"{checkpointed['in_use_gb']:.2f} against {plain['in_use_gb']:.2f} "
      f"({checkpointed['in_use_gb'] / plain['in_use_gb']:.2f}x); {checkpointed['ms_per_iter']:,.0f} ms/iter against "
      f"{plain['ms_per_iter']:,.0f} ({checkpointed['ms_per_iter'] / plain['ms_per_iter']:.2f}x)")
with open(results_file, 'a') as f:
    f.write(json.dumps({'bench': 'memory_estimate', 'device_name': cpu, 'shape': shape, 'batch_size': batch_size,
                        'max_iters': max_iters, 'rounds': rounds, 'cases': rows}) + '\n')
