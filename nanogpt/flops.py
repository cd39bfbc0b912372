"""
The peak FLOP/s that MFU is measured against: a table for GPUs, a measured matmul rate for the CPU.
"""
import functools
import re
import time

import torch

from nanogpt.cpu_linears import cpuinfo_text, first_processor, onednn_linear, onednn_usable


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
    text = cpuinfo_text()
    return default if text is None else first_processor(text).get('model name', default)


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
