"""
CPU linears in oneDNN, and the rule that decides where they pay.

PyTorch's float32 CPU matmuls go to MKL; oneDNN is in torch too. On AMD processors MKL runs its
AVX2 code, while oneDNN uses AVX-512 where the CPU has it, so there oneDNN's matmuls are up to
twice as fast. On Intel CPUs with AVX-512 both libraries reach the same rate, and the oneDNN path
(one more copy per weight gradient) is then slower. So 'auto' measures both rates on the machine
it runs on and takes oneDNN only where it clearly wins.
"""
import collections
import functools
import platform
import statistics
import time

import torch

from nanogpt.report import fail


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


# 'auto' takes oneDNN only when it is at least this much faster on the model's own linears: a


# smaller measured gain is within the noise of a shared machine, and not worth a different path


ONEDNN_MARGIN = 1.1


def prefer_onednn(plain_seconds, onednn_seconds, margin=ONEDNN_MARGIN):
    """The rule for 'auto', from the two measured times of the same linears."""
    return plain_seconds >= margin * onednn_seconds


def time_linears(shapes, rows, use_onednn, backward=True, repeats=3, max_rows=1024, pass_flops=5e9):
    """Seconds of a forward (and backward) pass through Linear layers of the given (in_features,
    out_features, bias, count) shapes, with plain torch or oneDNN: each distinct shape timed (the
    median of repeats) and counted count times. The rows per step are capped at max_rows, and for
    big models further so that one pass over the shapes stays near pass_flops (but at least 64
    rows): the choice is made in about a second even for a GPT-2 shape."""
    flops_per_row = (6 if backward else 2) * sum(n_in * n_out for n_in, n_out, _, _ in shapes)
    rows = max(1, min(rows, max_rows, max(64, int(pass_flops / flops_per_row))))
    with torch.random.fork_rng(devices=[]):  # training's random state stays untouched
        torch.manual_seed(0)
        layers = [(torch.nn.Linear(n_in, n_out, bias), torch.randn(rows, n_in, requires_grad=backward),
                   torch.randn(rows, n_out), count) for n_in, n_out, bias, count in shapes]
    total = 0.0
    with torch.set_grad_enabled(backward):
        for layer, x, grad, count in layers:
            if use_onednn:
                use_onednn_linears(layer)
            times = []
            for _ in range(repeats + 1):  # the first run warms up (oneDNN builds its kernels then)
                start = time.perf_counter()
                y = layer(x)
                if backward:
                    y.backward(grad)
                times.append(time.perf_counter() - start)
            total += count * statistics.median(times[1:])
    return total


def linear_shapes(model):
    """The (in_features, out_features, bias, count) of every distinct nn.Linear in model."""
    counts = collections.Counter((m.in_features, m.out_features, m.bias is not None)
                                 for m in model.modules() if type(m) is torch.nn.Linear)
    return [(*shape, count) for shape, count in counts.items()]


def resolve_onednn(onednn, device_type, dtype, compile, model, rows, backward=True):
    """(use oneDNN, measured speed-up or None) for a model about to run rows rows per step (forward
    only for generation, backward=False). 'auto' times the model's own linear layers both ways on
    this machine and takes oneDNN where prefer_onednn says so: measured, since which library wins
    depends on the CPU (see the top of this file)."""
    onednn = check_onednn_setting(onednn, device_type, dtype, compile)
    if onednn != 'auto':
        return onednn, None
    if not onednn_usable(device_type, dtype, compile):
        return False, None
    shapes = linear_shapes(model)
    plain, fast = [], []
    for _ in range(2):  # alternating, so that both see the same load
        plain.append(time_linears(shapes, rows, False, backward))
        fast.append(time_linears(shapes, rows, True, backward))
    return prefer_onednn(min(plain), min(fast)), min(plain) / min(fast)


def onednn_linear(x, weight, bias=None):
    """x @ weight.T + bias in oneDNN (PyTorch's CPU linear op without post-ops)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


class OneDNNLinear(torch.autograd.Function):
    """nn.Linear's math, with all three of its matmuls in oneDNN.

    PyTorch's CPU matmuls go to MKL, which runs its AVX2 code on AMD processors; oneDNN uses
    AVX-512 wherever the CPU has it, which doubles the float32 matmul rate of these Zen machines.
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
