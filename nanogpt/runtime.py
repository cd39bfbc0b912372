"""
Where and how the math runs: the device, the dtype, compile, the CPU's linears, and the peak
FLOP/s that MFU is measured against.
"""
import ctypes
import functools
import os
import re
import resource
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch

from nanogpt import distributed
from nanogpt.cpu_linears import (check_onednn_setting, onednn_linear, onednn_usable, resolve_onednn,
                                 use_onednn_linears)
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


COMPILE_SCOPES = ('auto', 'model', 'blocks')


def resolve_compile_scope(scope, compile, fsdp, world_size):
    """What torch.compile wraps: the whole model ('model': one graph with the embeddings, head and
    loss) or each Transformer block on its own ('blocks': one block's code, compiled once, serves
    every block, so compiling is quicker). FSDP needs blocks: its hooks between the blocks cannot be
    traced, and would break a whole-model graph at every block. 'auto' is blocks under torchrun
    (measured: half the compile time, no graph break, the same ms/iter; benchmarks/README.md) and the whole
    model in one process, where the head and loss compile with the rest."""
    if scope not in COMPILE_SCOPES:
        fail(f"--compile_scope takes {', '.join(COMPILE_SCOPES)}, not {scope!r}")
    if fsdp and scope == 'model':
        fail("--compile_scope=model cannot trace FSDP's hooks between the blocks; use blocks (or auto) with --fsdp=True")
    if not compile:
        return None
    if scope == 'auto':
        return 'blocks' if fsdp or world_size > 1 else 'model'
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


def place_model(model, runtime, rows, backward=True, onednn_choice=None):
    """model on the runtime's device, its Linear layers in oneDNN where the runtime's onednn setting
    says so; 'auto' is decided here, for this model at rows rows per step (see cpu_linears.py), and
    runtime.onednn_speedup keeps what was measured. onednn_choice, a choice made before (the one a
    resumed run's checkpoint recorded), replaces 'auto' where it still works."""
    if runtime.dtype == 'float16' and model.config.mlp == 'relu2':
        # relu(x)^2 passes float16's largest value (65504) once x passes 256, which happens in training
        fail("mlp='relu2' overflows float16 (an activation past 256 squares past 65504); use --dtype=bfloat16 "
             "or --dtype=float32, or --mlp=gelu for float16")
    model.to(runtime.device)
    if runtime.onednn == 'auto' and onednn_choice is not None:
        runtime.onednn = bool(onednn_choice) and onednn_usable(runtime.device_type, runtime.dtype, runtime.compile)
    runtime.onednn, runtime.onednn_speedup = resolve_onednn(runtime.onednn, runtime.device_type, runtime.dtype,
                                                            runtime.compile, model, rows, backward)
    return use_onednn_linears(model) if runtime.onednn else model


def describe_processes(runtime, fsdp=False):
    """For start-up lines: '1 process', or how many under torchrun, how they share the work, and the backend."""
    if not runtime.ddp:
        return '1 process'
    return f"{runtime.world_size} processes ({'FSDP' if fsdp else 'DDP'}, {runtime.backend})"


def describe_linears(runtime):
    """For start-up lines: ', oneDNN linears' where they are on, with what 'auto' measured."""
    if runtime.onednn_speedup is None:
        return ', oneDNN linears' if runtime.onednn else ''
    return (f", oneDNN linears (auto: {runtime.onednn_speedup:.2f}x the plain ones here)" if runtime.onednn else
            f", plain linears (auto: oneDNN measured {runtime.onednn_speedup:.2f}x here)")


def setup_runtime(device, dtype, compile, backend='auto', seed=1337, onednn='auto'):
    """Everything about where and how the math runs, for train.py, sample.py and bench.py.

    Under torchrun (RANK is set) this joins the process group, puts each rank on its own
    device (cuda:LOCAL_RANK, or the CPU) and picks nccl on CUDA, gloo elsewhere.
    """
    ddp, rank, local_rank, world_size = distributed.torchrun_ranks()
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
        backend = distributed.join_group(device, backend)
    device_type = torch.device(device).type
    if device_type == 'cpu':
        keep_freed_memory()
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
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    torch.manual_seed(seed + rank)  # ranks differ in dropout masks
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return SimpleNamespace(
        ddp=ddp, rank=rank, local_rank=local_rank, world_size=world_size, master=rank == 0,
        device=device, device_type=device_type, dtype=dtype, ptdtype=ptdtype, backend=backend,
        compile=compile, onednn=check_onednn_setting(onednn, device_type, dtype, compile), onednn_speedup=None,  # place_model decides 'auto'
        autocast=nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=ptdtype),
    )


# dense (no sparsity) peak TFLOPS of common GPUs: (bfloat16/float16 tensor cores, TF32 tensor cores).
# float32 training uses the TF32 figure, since matmuls run in TF32 here. A key matches whole words of
# the device's name ("L4" is not "L40"), and the longest match wins ("H100 NVL" over "H100"); None
# is a GPU whose figure is not known here (no MFU rather than a wrong one).
GPU_PEAK_TFLOPS = {
    'H100 PCIe': (756, 378), 'H100 NVL': (835, 418), 'H100': (989, 495), 'H200 NVL': (835, 418), 'H200': (989, 495),
    'GH200': (989, 495), 'B200': (2250, 1100), 'A100': (312, 156), 'A10G': None, 'A10': (125, 62.5),
    'L40S': (362, 183), 'L40': (181, 90.5), 'L4': (121, 60), 'RTX 4090': (165, 83), 'RTX 3090': (71, 36),
    'V100': (125, 15.7), 'T4': (65, 8.1),
}


def cpu_name(default='unknown CPU'):
    """The CPU's model name as Linux reports it (e.g. 'AMD EPYC'), for the figures' records."""
    if not os.path.exists('/proc/cpuinfo'):
        return default
    with open('/proc/cpuinfo') as f:
        return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), default)


def gpu_peak_tflops(name):
    """The (bfloat16, TF32) peak of a GPU from its device name, or None for an unknown one."""
    words = re.split(r'[\s\-_]+', name.upper())
    matches = [key for key in GPU_PEAK_TFLOPS
               if any(words[i:i + len(key.split())] == key.upper().split() for i in range(len(words)))]
    return GPU_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def peak_flops(device='cpu', dtype='float32'):
    """The FLOP/s that MFU is measured against: the table above for GPUs (None for one it does
    not know), and for a CPU a measured float32 matmul rate."""
    device_type = torch.device(device).type
    if device_type == 'cuda':
        peaks = gpu_peak_tflops(torch.cuda.get_device_name(device))
        return None if peaks is None else (peaks[1] if dtype == 'float32' else peaks[0]) * 1e12
    if device_type == 'cpu':
        return measured_cpu_flops()
    return None


@functools.lru_cache(maxsize=None)
def measured_cpu_flops(n=1024, seconds=0.1):
    """The fastest float32 matmul rate this CPU gives torch, MKL's or oneDNN's, with torch's
    threads (the best single matmul over 0.1 s of each, measured once per process)."""
    generator = torch.Generator().manual_seed(0)  # not the global RNG: training's random state is untouched
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    matmuls = [lambda: a @ b]
    if onednn_usable('cpu', 'float32'):
        matmuls.append(lambda: onednn_linear(a, b))
    rates = []
    for matmul in matmuls:
        matmul()  # warm up
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            matmul()
            rates.append(2 * n ** 3 / (time.perf_counter() - t))
    return max(rates)


def peak_memory_gb(runtime):
    """This process's peak resident memory in GB and, on CUDA, the most memory torch held on the GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)
    gpu = torch.cuda.max_memory_allocated(runtime.device) if runtime.device_type == 'cuda' else None
    return {'peak_rss_gb': round(rss / 2**30, 3), 'peak_gpu_gb': None if gpu is None else round(gpu / 2**30, 3)}


def peak_memory(runtime):
    peak = peak_memory_gb(runtime)
    return f"peak memory {peak['peak_rss_gb']:.2f} GB" + \
        (f" (GPU {peak['peak_gpu_gb']:.2f} GB)" if peak['peak_gpu_gb'] is not None else '')
