"""
The process's memory: glibc's allocator kept from handing freed blocks back, the peak a run reports,
the peak a run will reach, estimated before it starts (and checked against a GPU's free memory), and
activations recomputed rather than kept.
"""
import ctypes
import functools
import resource
import sys

import torch
import torch.utils.checkpoint

from nanogpt import distributed
from nanogpt.lora import LINEARS
from nanogpt.optimizers import muon_params
from nanogpt.report import fail


def keep_freed_memory():
    """Stop glibc from handing large freed blocks back to the OS. By default each new activation
    of more than ~128 KB is fresh memory that the kernel zeroes page by page: ~800 page faults a
    step in the laptop recipe, which slowed its biggest matmuls by a third. CPU-only; a no-op
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def peak_memory_gb(runtime, estimate=None):
    """This process's peak resident memory in GB and, on CUDA, the most memory torch held on the GPU;
    beside them the estimate made before the run (estimate_peak's), if given."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)
    gpu = torch.cuda.max_memory_allocated(runtime.device) if runtime.device_type == 'cuda' else None
    return {'peak_rss_gb': round(rss / 2**30, 3), 'peak_gpu_gb': None if gpu is None else round(gpu / 2**30, 3),
            **({'memory_estimate_gb': round(estimate['total'] / 2**30, 3)} if estimate else {})}


def peak_memory(runtime, estimate=None):
    peak = peak_memory_gb(runtime, estimate)
    return f"peak memory {peak['peak_rss_gb']:.2f} GB" + \
        (f" (GPU {peak['peak_gpu_gb']:.2f} GB)" if peak['peak_gpu_gb'] is not None else '') + \
        (f", estimated {peak['memory_estimate_gb']:.2f} GB" if estimate else '')


# bytes per element of the math each training dtype runs (under autocast: the matmuls, attention)
DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}


def _numel(params):
    return sum(p.numel() for p in params)


def _bytes(params):
    return sum(p.numel() * p.element_size() for p in params)


def _trains(module):
    """Whether any of a module's weights (a LoRA adapter's included) gets a gradient: a linear whose
    own are all frozen keeps its input only if an adapter reads it."""
    return any(p.requires_grad for p in module.parameters())


def block_saved_bytes(model, batch_size, block_size, dtype, device_type, fsdp=False):
    """Bytes that autograd keeps for the backward pass of one Block, derived from what each op saves
    (model.py's Block, torch 2.13):
    - the residual stream twice (ln_1's and ln_2's inputs): float32, or the low precision under
      FSDP, whose gathered embeddings start the stream in it;
    - each norm's statistics (LayerNorm: mean and 1/std, RMSNorm: 1/rms), float32 per token, and
      RMSNorm with a gain its normalised input too;
    - each trained linear's input, in the math's precision (autocast saves its cast copy);
    - attention: fused (flash) kernels keep q, k, v (the c_attn output itself), the output and a
      float32 log-sum-exp per head; the CPU with dropout takes the math path, which keeps float32
      copies of q, k and v and three (heads, T, T) float32 tensors per sequence: the softmax, the
      dropout mask and the dropped weights; qk_norm or rotary add new q and k (and, fused, a copy of
      the output in c_proj's layout), qk_norm its statistics and inputs;
    - the MLP's hidden layer twice (GELU's input and output, or ReLU's output and its square);
    - dropout masks after attention and the MLP: a copy in the input's dtype on the CPU, one byte
      per element on a GPU;
    - LoRA adapters: their rank-wide hidden layer; with lora_dropout the mask, and the dropped input
      in place of the input (beside it for attention's output, which attention keeps anyway).
    Checked against saved_tensors_hooks on tiny models by tests/test_memory.py."""
    cfg, block = model.config, model.transformer.h[0]
    C, heads, T = cfg.n_embd, cfg.n_head, block_size
    low = DTYPE_BYTES[dtype]  # the linears' and attention's precision
    stream = low if fsdp else 4
    mask = 1 if device_type == 'cuda' else None  # None: a copy of the input's dtype
    linears = {path: block.get_submodule(path) for path in LINEARS}
    per_token = 2 * C * stream + 2 * _norm_saved_bytes(cfg, stream)
    per_token += C * low * (_trains(linears['attn.c_attn']) + _trains(linears['mlp.c_fc']))
    math_attention = device_type == 'cpu' and cfg.dropout > 0
    if math_attention:
        per_token += 3 * C * 4 + 3 * heads * T * 4 + C * low  # q, k, v; softmax, mask, dropped; the output
    else:
        per_token += 3 * C * low + heads * 4 + C * low  # q, k, v as c_attn wrote them; log-sum-exp; the output
    if cfg.qk_norm:  # its inputs: views of c_attn's output in float32, float32 copies of q and k under autocast
        per_token += 2 * heads * 4 + (2 * C * 4 if low < 4 else 3 * C * 4 if math_attention else 0)
    if (cfg.qk_norm or cfg.rotary) and not math_attention:  # new q and k, the output copied for c_proj
        per_token += 3 * C * low
    hidden_kept = 1 + _trains(linears['mlp.c_proj'])  # the activation's input (or output), and c_proj's input
    per_token += hidden_kept * 4 * C * low
    if cfg.dropout > 0:
        per_token += 2 * C * (mask or low)
    for linear in linears.values():
        if getattr(linear, 'lora_A', None) is not None:
            per_token += linear.lora_A.size(0) * low
            if linear.lora_dropout.p > 0:
                per_token += linear.in_features * (mask or low) + (C * low if linear is linears['attn.c_proj'] else 0)
    return per_token * batch_size * block_size


def _norm_saved_bytes(cfg, stream):
    """What a norm keeps per token besides its input: LayerNorm its mean and 1/std, RMSNorm 1/rms
    and, with a gain, the normalised input."""
    if cfg.norm == 'layernorm':
        return 8
    return 4 + (cfg.n_embd * stream if cfg.norm == 'rmsnorm' else 0)


def outside_blocks_saved_bytes(model, batch_size, block_size, dtype, device_type, fsdp=False):
    """Bytes autograd keeps outside the blocks, but for the log-softmax that the logits part counts:
    the target ids, the token ids and positions where the embeddings train (int64), rotary's tables,
    the embedding dropout's mask, ln_f's input and statistics, lm_head's input where it trains, and
    the loss; under autocast also the low-precision copy of every linear weight that
    autograd keeps (FSDP gathers the weights in that precision already, and frees them after each
    block)."""
    cfg = model.config
    tokens, C, low = batch_size * block_size, cfg.n_embd, DTYPE_BYTES[dtype]
    stream = low if fsdp else 4
    embeddings_train = model.transformer.wte.weight.requires_grad
    per_token = 8 + 8 * embeddings_train + C * stream + _norm_saved_bytes(cfg, stream) + \
        C * low * model.lm_head.weight.requires_grad
    if cfg.dropout > 0:
        per_token += C * (1 if device_type == 'cuda' else stream)
    positions = block_size * (C // cfg.n_head * 4 if cfg.rotary else 8 * embeddings_train)  # cos and sin, or indices
    return per_token * tokens + positions + 4


def weight_copy_bytes(model, dtype, blocks):
    """autocast's low-precision copies of the linears' weights that autograd keeps: lm_head's and
    those of `blocks` blocks (every block, or with activation checkpointing the one being recomputed)."""
    if dtype == 'float32':
        return 0
    matrices = [p for p in model.transformer.h[0].parameters() if p.dim() == 2]
    return DTYPE_BYTES[dtype] * (blocks * _numel(matrices) + model.lm_head.weight.numel())


def logits_bytes(model, batch_size, block_size):
    """The loss's peak, at the start of the backward pass: the float32 log-softmax of the logits
    (batch, time, vocabulary) that cross_entropy keeps, the gradient arriving at it and the
    gradient of the logits it makes, all alive at once. The forward's own peak there (logits,
    their float32 copy under autocast, the log-softmax) is lower."""
    return 3 * 4 * batch_size * block_size * model.config.vocab_size


def backward_in_flight_bytes(model, batch_size, block_size, dtype, device_type):
    """Gradients alive inside one block's backward beside what it saved: two of its widest, the MLP's
    hidden layer, or on the CPU's math attention path two (heads, T, T) float32 ones."""
    cfg = model.config
    widest = 4 * cfg.n_embd * DTYPE_BYTES[dtype]
    if device_type == 'cpu' and cfg.dropout > 0:
        widest = max(widest, cfg.n_head * block_size * 4)
    return 2 * widest * batch_size * block_size


def resident_besides(model):
    """This process's resident memory now, less the model's tensors held on the CPU: the interpreter,
    torch's libraries and whatever else the process holds (0 where /proc is missing: not Linux)."""
    try:
        with open('/proc/self/statm') as f:
            resident = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0
    on_cpu = [t for t in (*model.parameters(), *model.buffers()) if t.device.type == 'cpu']
    return max(0, resident - _bytes(on_cpu))


def estimate_peak(model, batch_size, block_size, dtype, device_type, optimizer='adamw', world_size=1, fsdp=False,
                  activation_checkpointing=False):
    """The peak memory of one training process, in bytes by part: {'weights', 'gradients', 'optimizer_state',
    'activations', 'logits', 'torch', 'total'} and 'optimizer' (its name).

    model is the GPT as train.py holds it before it goes to the device: on the CPU or the meta device,
    LoRA adapters attached (only what requires grad gets gradients and optimizer state). Assumes
    eager mode (torch.compile fuses some ops and often peaks lower) and counts as if all of these
    were alive at once: the weights (float32), the gradients (float32; kept between micro-steps;
    DDP adds its buckets, another gradient-sized buffer), the optimizer's state (AdamW: two
    float32 buffers per parameter; Muon: one for the blocks' matrices), the activations (what
    autograd saves, every block's, or with activation checkpointing each block's input plus one
    block recomputed; and the gradients in flight inside one block's backward) and the logits'
    part of the loss. FSDP divides the weights, gradients and optimizer state by world_size and
    adds what it gathers: the root's weights (embeddings, ln_f, the head) for the whole step and
    two blocks (the one running, the next one prefetched), and their unsharded gradients until
    they are reduce-scattered.

    'torch' is the process's own memory: on the CPU, its resident memory now besides the model
    (interpreter, libraries, data pages), so that the total predicts the peak resident memory; on
    a GPU 0: the CUDA context is outside the free memory check_fits compares with, and the caching
    allocator's rounding and fragmentation, cuBLAS's and NCCL's workspaces come on top of the total."""
    cfg = model.config
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    shards = world_size if fsdp else 1
    low = DTYPE_BYTES[dtype]
    weights, gradients = _bytes(params) / shards, _bytes(trainable) / shards
    if fsdp:  # what FSDP holds unsharded: the root's weights all step, two blocks at a time
        block_params = list(model.transformer.h[0].parameters())
        root_params = [p for name, p in model.named_parameters() if not name.startswith('transformer.h.')]
        weights += low * (_numel(root_params) + 2 * _numel(block_params))
        gradients += 4 * _numel(p for p in root_params + block_params if p.requires_grad)
    elif world_size > 1:
        gradients *= 2
    muon = _numel(muon_params(model)) if optimizer == 'muon' else 0
    optimizer_state = 4 * (2 * (_numel(trainable) - muon) + muon) / shards
    tokens = batch_size * block_size
    block = block_saved_bytes(model, batch_size, block_size, dtype, device_type, fsdp)
    if activation_checkpointing:  # each block's input, and one block's activations recomputed at a time
        kept = cfg.n_layer * tokens * cfg.n_embd * (low if fsdp else 4) + block
    else:
        kept = cfg.n_layer * block
    activations = kept + outside_blocks_saved_bytes(model, batch_size, block_size, dtype, device_type, fsdp) + \
        backward_in_flight_bytes(model, batch_size, block_size, dtype, device_type) + \
        (0 if fsdp else weight_copy_bytes(model, dtype, 1 if activation_checkpointing else cfg.n_layer))
    parts = dict(weights=weights, gradients=gradients, optimizer_state=optimizer_state, activations=activations,
                 logits=logits_bytes(model, batch_size, block_size),
                 torch=resident_besides(model) if device_type == 'cpu' else 0)
    return {**{k: int(v) for k, v in parts.items()}, 'total': int(sum(parts.values())), 'optimizer': optimizer}


OPTIMIZER_NAMES = {'adamw': 'AdamW', 'muon': 'Muon and AdamW'}


def describe_estimate(estimate):
    """train.py's start-up line for estimate_peak's result, in GB (2**30 bytes)."""
    gb = {k: v / 2**30 for k, v in estimate.items() if k != 'optimizer'}
    torch_part = f", torch {gb['torch']:.2f}" if estimate['torch'] else ''
    return f"memory estimate per process: {gb['total']:.2f} GB at the peak (weights {gb['weights']:.2f}, " \
        f"gradients {gb['gradients']:.2f}, {OPTIMIZER_NAMES.get(estimate['optimizer'], estimate['optimizer'])} " \
        f"state {gb['optimizer_state']:.2f}, activations {gb['activations']:.2f}, logits {gb['logits']:.2f}" \
        f"{torch_part} GB)"


def check_fits(estimate, runtime, check_memory=True, free_bytes=None):
    """Say the estimate (rank 0), and on CUDA stop (one line, exit status 2) when it exceeds the GPU's
    free memory, saying what to change; with check_memory False only warn. Call it before anything big
    is on the GPU. free_bytes: the free memory to compare with; None reads the device's (the least
    over the ranks), and on other devices nothing is checked."""
    if runtime.master:
        print(describe_estimate(estimate), flush=True)
    if free_bytes is None:
        if runtime.device_type != 'cuda':
            return
        free_bytes = min(distributed.gather_from_ranks(torch.cuda.mem_get_info(runtime.device)[0], runtime))
    if estimate['total'] <= free_bytes:
        return
    message = f"the memory estimate, {estimate['total'] / 2**30:.2f} GB per process, exceeds the " \
        f"{free_bytes / 2**30:.2f} GB free on {runtime.device} (activations {estimate['activations'] / 2**30:.2f}, " \
        f"logits {estimate['logits'] / 2**30:.2f} GB): lower batch_size and raise gradient_accumulation_steps " \
        f"to match, or set activation_checkpointing=True, fsdp=True under torchrun, or lora_rank=8 to finetune " \
        f"(docs/memory.md)"
    if check_memory:
        fail(message + "; --check_memory=False tries anyway")
    if runtime.master:
        print(f"warning: {message}; trying anyway (check_memory=False)", file=sys.stderr, flush=True)


def recompute_activations(model):
    """Activation checkpointing: each block keeps only its input for the backward pass, which runs
    the block's forward again (drawing the same dropout masks: the random state is restored) to get
    the rest. Applied after compile, around each block's call, so that a compiled block's graph is
    the one a run without it compiles, and its results are bit for bit the same."""
    for block in model.transformer.h:
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)
