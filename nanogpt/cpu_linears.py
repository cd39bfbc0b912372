"""
CPU linears in oneDNN, and the rule that decides where they pay.

PyTorch's float32 CPU matmuls go to MKL; oneDNN is in torch too. On AMD processors MKL runs its
AVX2 code, while oneDNN uses AVX-512 where the CPU has it; where the CPU runs AVX-512 at full
width (AMD's family 26, Zen 5, and later) that makes oneDNN's matmuls up to twice as fast. Zen 4
(family 25) runs each 512-bit instruction in two 256-bit halves, so there the two libraries
match and the oneDNN path (one more copy per weight gradient) is slightly slower. On Intel CPUs
MKL runs AVX-512 itself, and oneDNN is slower; without AVX-512 both run AVX2. So 'auto' takes
oneDNN on AMD CPUs of family 26 or later with AVX-512 only: a rule on what the CPU is, never a
timing, so that the same command on the same machine always takes the same numeric path,
whatever else the machine is doing.
"""
import collections
import functools
import os
import platform
import re

import torch

from nanogpt.report import fail

# what oneDNN's AVX-512 kernels (its 'avx512_core') need, as /proc/cpuinfo names the flags
AVX512_FLAGS = {'avx512f', 'avx512bw', 'avx512dq', 'avx512vl'}
CPUINFO = '/proc/cpuinfo'
VENDOR_NAMES = {'AuthenticAMD': 'AMD', 'GenuineIntel': 'Intel'}

# AMD's first family whose cores run AVX-512 at full width (Zen 5; Zen 4 is family 25)
FULL_WIDTH_AMD_FAMILY = 26

# The facts of a CPU that the rule reads: its vendor id (e.g. 'AuthenticAMD', None where it
# cannot be read), whether it runs AVX-512, and its family number (None where unknown).
CpuFacts = collections.namedtuple('CpuFacts', 'vendor avx512 family')


def onednn_usable(device_type, dtype, compile=False):
    """oneDNN linears need an x86-64 CPU, float32 and eager mode (inductor cannot lower oneDNN's
    linear with weights that change)."""
    return (device_type == 'cpu' and dtype == 'float32' and not compile and torch.backends.mkldnn.is_available()
            and platform.machine().lower() in ('x86_64', 'amd64'))


def check_onednn_setting(onednn, device_type, dtype, compile=False):
    """The --onednn setting as given ('auto', True or False), or a one-line error for one that cannot work."""
    if onednn == 'auto':
        return onednn
    if not isinstance(onednn, bool):
        fail(f"--onednn takes auto, True or False, not {onednn!r}")
    if onednn and not onednn_usable(device_type, dtype, compile):
        fail("--onednn=True needs an x86-64 CPU, --dtype=float32, --compile=False and a torch built with "
             "oneDNN; use --onednn=auto")
    return onednn


def onednn_pays(vendor, avx512, family):
    """The rule for 'auto': oneDNN linears on AMD CPUs that run AVX-512 at full width, where MKL
    keeps to AVX2 and oneDNN does not (a Zen 5 EPYC: ~22-26 against ~33 ms a step). On a Zen 4
    EPYC the two match (oneDNN 1.01-1.02x slower), Intel's MKL runs AVX-512 already (a Xeon:
    44.5-48.1 ms with oneDNN against 35.0-39.8), and without AVX-512 both libraries run AVX2."""
    return vendor == 'AuthenticAMD' and avx512 and (family or 0) >= FULL_WIDTH_AMD_FAMILY


def describe_cpu(vendor, avx512, family):
    """The facts the rule read, in a few words for the start-up line: 'Intel with AVX-512',
    'AMD family 26, full-width AVX-512'."""
    if vendor is None:
        return 'CPU vendor unknown'
    if vendor == 'AuthenticAMD' and avx512:  # the family decides the width
        if family is None:
            return 'AMD with AVX-512, family unknown'
        width = 'full-width AVX-512' if onednn_pays(vendor, avx512, family) else 'AVX-512 in 256-bit halves'
        return f"AMD family {family}, {width}"
    return f"{VENDOR_NAMES.get(vendor, vendor)} {'with' if avx512 else 'without'} AVX-512"


def first_processor(text):
    """The fields of a Linux /proc/cpuinfo's first processor, by name ('vendor_id', 'flags',
    'model name', ...; an ARM CPU's have no vendor_id)."""
    lines = text.strip().split('\n\n')[0].splitlines()
    return {name.strip(): value.strip() for name, _, value in (line.partition(':') for line in lines)}


def read_cpuinfo(text):
    """The CpuFacts in the text of a Linux /proc/cpuinfo."""
    fields = first_processor(text)
    family = fields.get('cpu family', '')
    return CpuFacts(fields.get('vendor_id'), AVX512_FLAGS <= set(fields.get('flags', '').split()),
                    int(family) if family.isdigit() else None)


def cpuinfo_text():
    """This machine's /proc/cpuinfo, or None where there is none (not Linux)."""
    if not os.path.exists(CPUINFO):
        return None
    with open(CPUINFO) as f:
        return f.read()


def cpu_facts():
    """This machine's CpuFacts: from /proc/cpuinfo where there is one. Elsewhere the vendor and
    family come from the PROCESSOR_IDENTIFIER that Windows sets ('AMD64 Family 25 Model 97 Stepping
    2, AuthenticAMD'; none on a Mac, all of whose x86 CPUs are Intel's) and AVX-512 is what torch found."""
    text = cpuinfo_text()
    if text is not None:
        return read_cpuinfo(text)
    identifier = os.environ.get('PROCESSOR_IDENTIFIER', '')
    _, comma, vendor = identifier.rpartition(',')
    family = re.search(r'\bFamily (\d+)', identifier)
    return CpuFacts(vendor.strip() if comma else None, torch.backends.cpu.get_cpu_capability() == 'AVX512',
                    int(family[1]) if family else None)


def resolve_onednn(onednn, device_type, dtype, compile):
    """(use oneDNN, why) for the --onednn setting: 'auto' follows onednn_pays on this CPU's facts
    where oneDNN linears can run at all, and why names those facts; an explicit setting is taken
    as given (why None)."""
    onednn = check_onednn_setting(onednn, device_type, dtype, compile)
    if onednn != 'auto':
        return onednn, None
    if not onednn_usable(device_type, dtype, compile):
        return False, None
    facts = cpu_facts()
    return onednn_pays(*facts), describe_cpu(*facts)


def onednn_linear(x, weight, bias=None):
    """x @ weight.T + bias in oneDNN (PyTorch's CPU linear op without post-ops)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


class OneDNNLinear(torch.autograd.Function):
    """nn.Linear's math, with all three of its matmuls in oneDNN.

    PyTorch's CPU matmuls go to MKL, which runs its AVX2 code on AMD processors; oneDNN uses
    AVX-512 wherever the CPU has it, which doubles the float32 matmul rate of a Zen 5.
    The forward and the input gradient are oneDNN's linear (x @ W.T, and grad @ W as a linear
    with W.T for weight). The weight gradient, grad.T @ x, sums over the batch*time rows that
    are the leading dimension of both; as a linear it would need both transposed, but it is
    exactly the weight gradient of a 1x1 convolution over those rows, a kernel oneDNN runs
    straight from row-major data (read as channels-last). Same results to float32 rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        (n_out, n_in), rows = weight.shape, grad_out.numel() // weight.size(0)
        grad = grad_out.reshape(rows, n_out).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad_out, weight.t())
        if ctx.needs_input_grad[1]:
            as_image = lambda t, channels: t.t().reshape(1, channels, 1, rows)  # (rows, C) read as NCHW channels-last
            weight_shape = torch.empty(n_out, n_in, 1, 1, memory_format=torch.channels_last)  # only its shape is read
            grad_w = torch.ops.aten.convolution_backward(
                as_image(grad, n_out), as_image(x.reshape(rows, n_in).contiguous(), n_in), weight_shape, None,
                [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1].view(n_out, n_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def onednn_linear_forward(linear, x):
    return OneDNNLinear.apply(x, linear.weight, linear.bias)


def use_onednn_linears(model):
    """Run every nn.Linear of model through OneDNNLinear (state_dict and checkpoints unchanged)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = functools.partial(onednn_linear_forward, module)
    return model
