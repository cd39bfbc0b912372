"""
LoRA finetuning: a low-rank adapter beside each chosen linear of every block, the model's own
weights frozen. A checkpoint's 'model' holds the merged weights, a plain GPT that the original
nanoGPT, sample.py, eval.py and export_hf.py read as any other; its 'lora' holds the frozen
weights and the adapters, from which --init_from=resume goes on training the adapters.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanogpt.report import fail

LINEARS = ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')  # a block's linears, by path


class LoRALinear(nn.Linear):
    """A frozen Linear plus scale * B A x: A starts random and B at zero, so that the adapted model
    starts as the model itself. The weight and bias are the Linear's own tensors, not copies."""

    def __init__(self, linear, rank, alpha, dropout):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device='meta')
        self.weight, self.bias = linear.weight, linear.bias
        weight = linear.weight
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own weights start
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + \
            F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale


def settings_of(rank, alpha, targets):
    """The LoRA settings as a checkpoint records them; targets in the blocks' order, whatever the order given."""
    named = {t.strip() for t in targets.split(',')}
    return {'rank': rank, 'alpha': float(alpha), 'targets': ','.join(sorted(named, key=_block_order))}


def _block_order(path):
    return LINEARS.index(path) if path in LINEARS else len(LINEARS)


def describe_settings(settings):
    return "without LoRA" if not settings else \
        f"with lora_rank={settings['rank']}, lora_alpha={settings['alpha']:g}, lora_targets={settings['targets']}"


def attach(model, rank, alpha, dropout, targets, init_from, checkpoint=None, say=True):
    """Put adapters on model's blocks (rank 0: none) and freeze the rest. Resuming (checkpoint given),
    the adapters and frozen weights come from the checkpoint, whose LoRA settings must be these."""
    if rank < 0:
        fail(f"--lora_rank must be 0 (no LoRA) or more, not {rank}")
    wanted = settings_of(rank, alpha, targets) if rank else None
    if checkpoint is not None:
        saved = checkpoint.get('lora')
        had = {k: saved[k] for k in ('rank', 'alpha', 'targets')} if saved else None
        if had != wanted:
            fail(f"the checkpoint was trained {describe_settings(had)}, not {describe_settings(wanted)}; resume "
                 f"with " + (' '.join(f"--lora_{k}={v}" for k, v in had.items()) if had else "--lora_rank=0"))
    if not rank:
        return
    if init_from == 'scratch':
        fail("LoRA adapts trained weights, and init_from='scratch' has none: use a run's out_dir, a GPT-2 "
             "name or a GPT-2 folder as --init_from, or --lora_rank=0")
    if new_ids := getattr(model, 'new_token_ids', None):
        fail(f"LoRA keeps the embeddings frozen, so the chat tokens this model lacked (ids {new_ids.start}-"
             f"{new_ids.stop - 1}) would never be learned: finetune for chat without LoRA first, then LoRA from that "
             f"run's out_dir")
    paths = wanted['targets'].split(',')
    if unknown := [p for p in paths if p not in LINEARS]:
        fail(f"--lora_targets names {', '.join(repr(p) for p in unknown)}, not a linear of the model's blocks; "
             f"choose among {','.join(LINEARS)}")
    model.requires_grad_(False)
    for block in model.transformer.h:
        for path in paths:
            parent_path, name = path.split('.')
            parent = block.get_submodule(parent_path)
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    model.lora_settings = wanted
    if checkpoint is not None:  # the frozen weights as they were, not merged, and the adapters
        model.load_state_dict(checkpoint['lora']['weights'], strict=False)
    if say:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"LoRA rank {rank}, alpha {alpha:g} on {wanted['targets']}: {trainable:,} trainable parameters "
              f"({100 * trainable / total:.2f}% of {total:,}), the rest frozen")


def split(model, state):
    """(merged, lora) from a full state dict of model: merged, the plain GPT state dict with each
    adapter folded into its weight; lora, what resuming needs (None for a model without adapters)."""
    if not state or not getattr(model, 'lora_settings', None):  # FSDP: the ranks but 0 hold nothing
        return state, None
    merged = {k: v for k, v in state.items() if not k.endswith(('.lora_A', '.lora_B'))}
    kept = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            weight, A, B = (state[f'{name}.{k}'] for k in ('weight', 'lora_A', 'lora_B'))
            # on the CPU, one layer at a time: a GPU holds no second copy of the weights while saving
            merged[f'{name}.weight'] = weight.cpu() + ((B @ A) * module.scale).cpu()
            kept.update({f'{name}.weight': weight, f'{name}.lora_A': A, f'{name}.lora_B': B})
    return merged, {**model.lora_settings, 'weights': kept}
