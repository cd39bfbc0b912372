"""
Memory per rank, FSDP against DDP: the bytes of parameters, gradients and AdamW state that each
torchrun process holds after one training step of a GPT-2 (124M) shaped model, counted from the
tensors themselves (under FSDP, each rank's local shards), for 1, 2 and 4 processes.

$ python benchmarks/fsdp_memory.py                          # CPU processes (gloo), 1, 2 and 4 of them
$ python benchmarks/fsdp_memory.py --ranks=1,8 --device=cuda  # GPUs of one machine (nccl)

Each configuration is one `torchrun --standalone` of this script, which then measures on every rank
(the --mode setting says which parallelism; empty is the launcher). A step is one micro-batch of
batch_size x tokens: activations are not what is measured here, and stay small. Not counted:
DDP's gradient buckets (another gradient-sized buffer), FSDP's all-gathered block of the moment,
activations and torch itself. The JSON lines (one per rank, in results_file) also hold each
rank's peak resident memory, and peak GPU memory on CUDA; on a CPU the peak is set by every rank
building the whole model before it is sharded, so it says little. The table shows the largest rank.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from nanogpt import distributed, runtime  # noqa: E402
from configurator import configure  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

ranks = '1,2,4'  # torchrun process counts to measure
modes = 'ddp,fsdp'
mode = ''  # set by the launcher for the torchrun workers: 'ddp' or 'fsdp'
device = 'cpu'  # 'cpu' (gloo) or 'cuda' (nccl, one GPU per process)
n_layer, n_head, n_embd, block_size, vocab_size = 12, 12, 768, 1024, 50304  # GPT-2 (124M)
batch_size, tokens = 1, 64  # the one micro-batch of the step
results_file = 'bench_results.jsonl'
configure(globals())


def tensor_bytes(tensors):
    return sum(distributed.local(t).numel() * t.element_size() for t in tensors if t is not None)


if mode:  # a torchrun worker
    rt = runtime.setup_runtime(device, 'float32', False, 'auto', 1337, onednn=False)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                          vocab_size=vocab_size, bias=False, dropout=0.0))
    if mode == 'fsdp':
        trained = distributed.shard(model, rt)
    else:
        trained = DDP(model.to(rt.device), device_ids=[rt.local_rank] if rt.device_type == 'cuda' else None)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), rt.device_type)
    x = torch.randint(vocab_size, (batch_size, tokens + 1), device=rt.device)
    trained(x[:, :-1], x[:, 1:])[1].backward()
    optimizer.step()  # the gradients stay, to be counted
    params = list(model.parameters())
    row = {
        'bench': 'fsdp_memory', 'mode': mode, 'world_size': rt.world_size, 'rank': rt.rank, 'device': rt.device_type,
        'params_bytes': tensor_bytes(params), 'grads_bytes': tensor_bytes(p.grad for p in params),
        'optimizer_bytes': tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                                        if isinstance(v, torch.Tensor)),
        **runtime.peak_memory_gb(rt)}
    rows = distributed.gather_from_ranks(row, rt)  # rank 0 prints them all: lines from several processes would mix
    if rt.master:
        print('\n'.join(map(json.dumps, rows)), flush=True)
    distributed.leave_group(rt)
    sys.exit(0)

cpu = runtime.cpu_name()
print(f"GPT-2 shape: {n_layer} layers, {n_embd} wide, vocabulary {vocab_size}; {device}: {cpu}")
print("| processes | mode | parameters MiB | gradients MiB | AdamW state MiB | total MiB per rank | vs the first |")
print("| --- | --- | --- | --- | --- | --- | --- |")
alone = {}
for n in map(int, ranks.split(',')):
    for each in modes.split(','):
        result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}',
                                 os.path.abspath(__file__), f'--mode={each}', f'--device={device}', f'--n_layer={n_layer}',
                                 f'--n_head={n_head}', f'--n_embd={n_embd}', f'--block_size={block_size}',
                                 f'--vocab_size={vocab_size}', f'--batch_size={batch_size}', f'--tokens={tokens}'],
                                capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
        if result.returncode != 0 or len(rows) != n:
            sys.exit(f"{each} with {n} processes failed:\n{result.stderr[-3000:]}")
        with open(results_file, 'a') as f:
            f.writelines(json.dumps({**row, 'cpu': cpu}) + '\n' for row in rows)
        largest = max(rows, key=lambda r: r['params_bytes'] + r['grads_bytes'] + r['optimizer_bytes'])
        total = largest['params_bytes'] + largest['grads_bytes'] + largest['optimizer_bytes']
        alone.setdefault(each, total)
        mb = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
        print(f"| {n} | {each.upper()} | {mb(largest['params_bytes'])} | {mb(largest['grads_bytes'])} | "
              f"{mb(largest['optimizer_bytes'])} | {mb(total)} | {total / alone[each]:.3f} |", flush=True)
