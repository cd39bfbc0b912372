"""
Where and how the math runs: the device, the dtype, compile, the CPU's linears.
"""
from contextlib import nullcontext
from types import SimpleNamespace

import torch

from nanogpt import distributed, memory
from nanogpt.cpu_linears import resolve_onednn, use_onednn_linears
from nanogpt.report import fail


def resolve_device(device):
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    try:
        kind, index = torch.device(device).type, torch.device(device).index
    except RuntimeError:
        fail(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == 'cuda' and not torch.cuda.is_available():
        fail(f"--device={device} but this machine has no CUDA GPU; use --device=cpu (or auto)")
    if kind == 'cuda' and index is not None and index >= torch.cuda.device_count():
        fail(f"--device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == 'mps' and not torch.backends.mps.is_available():
        fail(f"--device={device} but MPS is not available here; use --device=cpu (or auto)")
    if kind not in ('cpu', 'cuda', 'mps'):
        fail(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def native_bf16():
    """bfloat16 in hardware (Ampere and later). torch.cuda.is_bf16_supported() alone also counts the
    slow emulation on a V100 or T4, where float16 with a GradScaler is the right choice."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(dtype, device_type):
    """'auto' is bfloat16 where CUDA supports it, else float16 on CUDA; float32 on CPU and MPS."""
    if dtype == 'auto':
        if device_type == 'cuda':
            return 'bfloat16' if native_bf16() else 'float16'
        return 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():  # emulated is allowed
        fail("--dtype=bfloat16 but this GPU does not support it; use --dtype=float16 (or auto)")
    return dtype


def resolve_compile(compile, device_type):
    """'auto' compiles on CUDA only: elsewhere the minute of compiling rarely pays for itself."""
    if compile == 'auto':
        return device_type == 'cuda'
    if not isinstance(compile, bool):
        fail(f"--compile takes auto, True or False, not {compile!r}")
    return compile


def compile_counts():
    """What torch.compile has done in this process so far, from Dynamo's own counters: graphs
    compiled, graph breaks, and recompiles (a compiled graph's guards failing on a new input)."""
    from torch._dynamo.utils import counters, guard_failures
    return dict(graphs=counters['stats']['unique_graphs'], graph_breaks=sum(counters['graph_break'].values()),
                recompiles=sum(len(failures) for failures in guard_failures.values()))


def describe_compile():
    """compile_counts() in one line, for a script to report on stderr."""
    return 'compile: {graphs} graphs, {graph_breaks} graph breaks, {recompiles} recompiles'.format(**compile_counts())


COMPILE_SCOPES = ('auto', 'model', 'blocks')


def resolve_compile_scope(scope, compile, fsdp, world_size, activation_checkpointing=False):
    """What torch.compile wraps: the whole model ('model': one graph with the embeddings, head and
    loss) or each Transformer block on its own ('blocks': one block's code, compiled once, serves
    every block, so compiling is quicker). FSDP needs blocks: its hooks between the blocks cannot be
    traced, and would break a whole-model graph at every block. 'auto' is blocks under torchrun
    (measured: half the compile time, no graph break, the same ms/iter; benchmarks/README.md) and the whole
    model in one process, where the head and loss compile with the rest; but blocks again with
    activation checkpointing, which then wraps each compiled block and trains the weights a run
    without it trains, to the bit (traced into one graph, dropout's masks come out otherwise)."""
    if scope not in COMPILE_SCOPES:
        fail(f"--compile_scope takes {', '.join(COMPILE_SCOPES)}, not {scope!r}")
    if fsdp and scope == 'model':
        fail("--compile_scope=model cannot trace FSDP's hooks between the blocks; use blocks (or auto) with --fsdp=True")
    if not compile:
        return None
    if scope == 'auto':
        return 'blocks' if fsdp or world_size > 1 or activation_checkpointing else 'model'
    return scope


def compile_model(model, wrapped, scope, say=True):
    """torch.compile for training: wrapped is the model as the loop calls it (DDP's wrapper, or the
    model itself). The whole of it, compiled outside DDP so that Dynamo's DDP optimizer splits the
    graph at DDP's gradient buckets, whose all-reduces then overlap the rest of the backward; or
    each block's forward, in place, where hooks (DDP's per gradient, FSDP's per block) stay outside
    the compiled code."""
    if say:
        print(f"compiling the {scope} (takes a minute or so)...")
    if scope == 'model':
        return torch.compile(wrapped)
    for block in model.transformer.h:
        block.forward = torch.compile(block.forward, fullgraph=True)
    return wrapped


def place_model(model, runtime):
    """model on the runtime's device, its Linear layers in oneDNN where runtime.onednn says so."""
    if runtime.dtype == 'float16' and model.config.mlp == 'relu2':
        # relu(x)^2 passes float16's largest value (65504) once x passes 256, which happens in training
        fail("mlp='relu2' overflows float16 (an activation past 256 squares past 65504); use --dtype=bfloat16 "
             "or --dtype=float32, or --mlp=gelu for float16")
    model.to(runtime.device)
    return use_onednn_linears(model) if runtime.onednn else model


def describe_processes(runtime, fsdp=False):
    """For start-up lines: '1 process', or how many under torchrun, how they share the work, and the backend."""
    if not runtime.ddp:
        return '1 process'
    return f"{runtime.world_size} processes ({'FSDP' if fsdp else 'DDP'}, {runtime.backend})"


def describe_linears(runtime):
    """For start-up lines on a CPU: which linears run, and for 'auto' the CPU facts that chose them
    (', oneDNN linears (AMD with AVX-512)'); nothing on a GPU."""
    if runtime.device_type != 'cpu':
        return ''
    why = f" ({runtime.onednn_reason})" if runtime.onednn_reason else ''
    return f", {'oneDNN' if runtime.onednn else 'plain'} linears{why}"


def setup_runtime(device, dtype, compile, backend='auto', seed=1337, onednn='auto', dist_timeout=600):
    """Everything about where and how the math runs, for train.py, sample.py and bench.py.

    Under torchrun (RANK is set) this joins the process group, puts each rank on its own
    device (cuda:LOCAL_RANK, or the CPU) and picks nccl on CUDA, gloo elsewhere; no rank waits
    longer than dist_timeout seconds for the others.
    """
    ddp, rank, local_rank, world_size = distributed.torchrun_ranks()
    restarts = 0  # how many times torchrun has started the group before, after a rank failed
    if ddp:
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
    device = resolve_device(device)
    if device.startswith('cuda'):
        # so that everything that means "the current GPU" (RNG states, pinned copies, synchronize)
        # means this one, also for --device=cuda:1 without torchrun
        torch.cuda.set_device(device)
    if ddp:
        backend, restarts = distributed.join_group(device, backend, dist_timeout)
    device_type = torch.device(device).type
    if device_type == 'cpu':
        memory.keep_freed_memory()
        # Values that decay towards zero (momentum buffers, zero-initialised weights) become denormal
        # floats, which x86 CPUs of both vendors handle in slow microcode: the modern recipe's steps
        # slowed fourfold within 200 iterations without this. Rounding such values to zero changes
        # nothing a model can notice.
        torch.set_flush_denormal(True)
    dtype = resolve_dtype(dtype, device_type)
    compile = resolve_compile(compile, device_type)
    if compile and device_type == 'cpu':
        # Inductor's CPU code adds the token embedding's gradient rows with atomic adds from every
        # thread, in whatever order they come: the same seed gave other weights each run. In
        # deterministic mode it keeps torch's own (ordered) kernel for that; eager CPU kernels are
        # deterministic anyway. GPUs keep their fast atomics (their documented non-determinism).
        torch.use_deterministic_algorithms(True, warn_only=True)
    # by what the CPU is, never by a timing: the same command on the same machine, the same numbers
    onednn, onednn_reason = resolve_onednn(onednn, device_type, dtype, compile)
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    torch.manual_seed(seed + rank)  # ranks differ in dropout masks
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return SimpleNamespace(
        ddp=ddp, rank=rank, local_rank=local_rank, world_size=world_size, master=rank == 0, restarts=restarts,
        device=device, device_type=device_type, dtype=dtype, ptdtype=ptdtype, backend=backend,
        compile=compile, onednn=onednn, onednn_reason=onednn_reason,
        autocast=nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=ptdtype),
    )


