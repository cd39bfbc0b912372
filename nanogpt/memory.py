"""
The process's memory: glibc's allocator kept from handing freed blocks back, and the peak a run reports.
"""
import ctypes
import resource
import sys

import torch


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


def peak_memory_gb(runtime):
    """This process's peak resident memory in GB and, on CUDA, the most memory torch held on the GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)
    gpu = torch.cuda.max_memory_allocated(runtime.device) if runtime.device_type == 'cuda' else None
    return {'peak_rss_gb': round(rss / 2**30, 3), 'peak_gpu_gb': None if gpu is None else round(gpu / 2**30, 3)}


def peak_memory(runtime):
    peak = peak_memory_gb(runtime)
    return f"peak memory {peak['peak_rss_gb']:.2f} GB" + \
        (f" (GPU {peak['peak_gpu_gb']:.2f} GB)" if peak['peak_gpu_gb'] is not None else '')
