"""
train.py's memory estimate per GPU process (nanogpt/memory.py: estimate_peak) for GPT-2's four
sizes, without training anything: a full finetune, the same with activation checkpointing, LoRA
and FSDP over 8 GPUs, against the memory of common cards.

$ python benchmarks/memory_table.py                                   # batch 12 x 1024 tokens, bfloat16
$ python benchmarks/memory_table.py --batch_size=4 --block_size=512 --lora_rank=16

Each model is built on the meta device (no memory, no weights), GPT-2's vocabulary (50257), eager
mode, AdamW. A card fits a run when the estimate is at most its memory; 'tight' when it leaves
less than a tenth of it free, which the CUDA context (~0.5 GB), cuBLAS's workspaces and the
caching allocator's rounding, all outside the estimate, may need.
"""
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import lora, memory, report  # noqa: E402
from configurator import configure  # noqa: E402
from model import GPT, GPT2_SHAPES, GPTConfig  # noqa: E402

batch_size = 12
block_size = 1024
dtype = 'bfloat16'
lora_rank = 8
fsdp_processes = 8
cards = '24,40,80,141'  # GB of memory per GPU: an RTX 4090, an A100 40GB, an H100, an H200
configure(globals())

if dtype not in memory.DTYPE_BYTES:
    report.fail(f"dtype takes {', '.join(memory.DTYPE_BYTES)}, not {dtype!r}")
if not 1 <= block_size <= 1024 or batch_size < 1 or lora_rank < 1 or fsdp_processes < 2:
    report.fail("block_size takes 1 to 1024 (GPT-2's context), batch_size and lora_rank 1 or more, "
                "fsdp_processes 2 or more")
capacities = [float(gb) for gb in cards.split(',')]


def estimate(shape, with_lora=False, **setup):
    n_layer, n_head, n_embd = shape
    with torch.device('meta'):
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=50257))
    if with_lora:  # as finetuning GPT-2 would: init_from names the weights (none are loaded here)
        lora.attach(model, lora_rank, 2.0 * lora_rank, 0.0, ','.join(lora.LINEARS), init_from='gpt2', say=False)
    return memory.estimate_peak(model, batch_size, block_size, dtype, 'cuda', **setup)


def verdict(total_gb, capacity):
    return 'no' if total_gb > capacity else 'tight' if total_gb > 0.9 * capacity else 'yes'


CASES = {'full finetune': {}, 'activation checkpointing': {'activation_checkpointing': True},
         f'LoRA rank {lora_rank}': {'with_lora': True},
         f'FSDP over {fsdp_processes}': {'fsdp': True, 'world_size': fsdp_processes}}
print(f"batch {batch_size} x {block_size} tokens, {dtype}, AdamW, eager; GB per process (2**30 bytes)")
print("| model | case | weights + gradients + AdamW | activations | logits | total | "
      + ' | '.join(f"{gb:g} GB" for gb in capacities) + ' |')
print('| --- | --- | ---: | ---: | ---: | ---: |' + ' --- |' * len(capacities))
for name, shape in GPT2_SHAPES.items():
    for case, setup in CASES.items():
        parts = {k: v / 2**30 for k, v in estimate(shape, **setup).items() if k != 'optimizer'}
        state = parts['weights'] + parts['gradients'] + parts['optimizer_state']
        print(f"| {name} | {case} | {state:.1f} | {parts['activations']:.1f} | {parts['logits']:.1f} | "
              f"{parts['total']:.1f} | " + ' | '.join(verdict(parts['total'], gb) for gb in capacities) + ' |')
