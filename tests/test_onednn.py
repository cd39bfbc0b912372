"""oneDNN linears on the CPU: nn.Linear's numbers (outputs and all gradients), and the rule on what
the CPU is that turns them on."""
import copy
import os
import re
from types import SimpleNamespace

import pytest
import torch

from nanogpt import cpu_linears, runtime
from conftest import TINY_MODEL
from model import GPT, GPTConfig

needs_onednn = pytest.mark.skipif(not cpu_linears.onednn_usable('cpu', 'float32'),
                                  reason="oneDNN linears are for x86-64 CPUs with a torch built with oneDNN")


@needs_onednn
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape', [(4, 16, 32), (5, 32), (3, 1, 32)])  # training, 2-D input, one token at a time
def test_onednn_linear_gives_nn_linear_outputs_and_gradients(bias, shape):
    grad_out = torch.randn(*shape[:-1], 48, generator=torch.Generator().manual_seed(1))
    for expected, got in zip(*outputs_and_gradients(shape, bias, lambda x: x, lambda y: y.backward(grad_out))):
        assert got.shape == expected.shape and got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_strided_inputs_and_broadcast_gradients():
    # a transposed view in, and y.sum()'s gradient, which is one value broadcast (stride 0)
    transposed = lambda x: x.transpose(0, 1)
    for expected, got in zip(*outputs_and_gradients((16, 4, 32), True, transposed, lambda y: y.sum().backward())):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def outputs_and_gradients(shape, bias, view, backward):
    """[y, x.grad, weight.grad(, bias.grad)] of nn.Linear(32, 48) and of its oneDNN copy, same x."""
    torch.manual_seed(0)
    reference = torch.nn.Linear(32, 48, bias=bias)
    fast = cpu_linears.use_onednn_linears(copy.deepcopy(reference))
    x = torch.randn(*shape)
    results = []
    for layer in (reference, fast):
        x_in = x.clone().requires_grad_()
        y = layer(view(x_in))
        backward(y)
        results.append([y, x_in.grad, layer.weight.grad] + ([layer.bias.grad] if bias else []))
    return results


@needs_onednn
def test_frozen_weights_get_no_gradient():
    layer = cpu_linears.use_onednn_linears(torch.nn.Linear(8, 4))
    layer.weight.requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None and layer.bias.grad is not None


@needs_onednn
def test_a_gpt_trains_the_same_with_onednn_linears():
    torch.manual_seed(0)
    models = [GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0))]
    models.append(cpu_linears.use_onednn_linears(copy.deepcopy(models[0])))
    assert models[0].state_dict().keys() == models[1].state_dict().keys()  # checkpoints are unchanged
    optimizers = [m.configure_optimizers(0.1, 1e-2, (0.9, 0.99), 'cpu') for m in models]
    data = (torch.randint(65, (30, 4, 1)) + torch.arange(17)) % 65  # counting: learnable in a few steps
    losses = [[], []]
    for batch in data:
        for model, optimizer, history in zip(models, optimizers, losses):
            _, loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(loss.item())
    assert losses[0][-1] < losses[0][0] - 1.0  # it learned something
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# /proc/cpuinfo as five machines write it (the first processor of each, flags cut to the telling ones)
AMD_EPYC_ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC 9R45
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512_vnni
"""
AMD_EPYC_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
"""
AMD_EPYC_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu sse2 avx fma avx2 vaes vpclmulqdq
"""
INTEL_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512_fp16 amx_tile
"""
ARM_GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve bf16
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize('cpuinfo, facts, linears, why', [
    # MKL keeps to AVX2 on AMD, where a Zen 5 runs oneDNN's AVX-512 twice as fast and a Zen 4 no faster
    (AMD_EPYC_ZEN5, ('AuthenticAMD', True, 26), 'oneDNN', 'AMD family 26, full-width AVX-512'),
    (AMD_EPYC_ZEN4, ('AuthenticAMD', True, 25), 'plain', 'AMD family 25, AVX-512 in 256-bit halves'),
    (INTEL_XEON, ('GenuineIntel', True, 6), 'plain', 'Intel with AVX-512'),  # MKL runs AVX-512 on Intel
    (AMD_EPYC_ZEN3, ('AuthenticAMD', False, 25), 'plain', 'AMD without AVX-512'),  # both libraries run AVX2
    (ARM_GRAVITON3, (None, False, None), 'plain', 'CPU vendor unknown'),
])
def test_the_rule_takes_onednn_on_amd_with_full_width_avx512_only(monkeypatch, tmp_path, cpuinfo, facts, linears, why):
    assert cpu_linears.read_cpuinfo(cpuinfo) == facts
    assert cpu_linears.onednn_pays(*facts) == (linears == 'oneDNN')
    (tmp_path / 'cpuinfo').write_text(cpuinfo)
    monkeypatch.setattr(cpu_linears, 'CPUINFO', str(tmp_path / 'cpuinfo'))
    pretend_onednn_runs(monkeypatch)
    use, reason = cpu_linears.resolve_onednn('auto', 'cpu', 'float32', False)
    assert describe(use, reason) == f", {linears} linears ({why})"


def pretend_onednn_runs(monkeypatch, machine='x86_64'):
    monkeypatch.setattr(cpu_linears.platform, 'machine', lambda: machine)
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: True)


def describe(use, reason, device_type='cpu'):
    """The start-up line's part for a runtime that setup_runtime gave these."""
    return runtime.describe_linears(SimpleNamespace(device_type=device_type, onednn=use, onednn_reason=reason))


def test_auto_is_plain_where_onednn_cannot_run_and_explicit_settings_are_taken(monkeypatch):
    monkeypatch.setattr(cpu_linears, 'cpu_facts', lambda: cpu_linears.CpuFacts('AuthenticAMD', True, 26))
    pretend_onednn_runs(monkeypatch)
    for device_type, dtype, compile in (('cpu', 'float16', False), ('cpu', 'bfloat16', False),
                                        ('cpu', 'float32', True), ('cuda', 'float32', False)):
        assert cpu_linears.resolve_onednn('auto', device_type, dtype, compile) == (False, None)
    assert describe(False, None, 'cuda') == ''  # a GPU's start-up line says nothing of CPU linears
    assert cpu_linears.resolve_onednn(False, 'cpu', 'float32', False) == (False, None)
    assert cpu_linears.resolve_onednn(True, 'cpu', 'float32', False) == (True, None)
    assert describe(True, None) == ', oneDNN linears' and describe(False, None) == ', plain linears'
    pretend_onednn_runs(monkeypatch, machine='aarch64')  # an ARM CPU: no oneDNN linears, whoever made it
    assert cpu_linears.resolve_onednn('auto', 'cpu', 'float32', False) == (False, None)


def test_without_proc_cpuinfo_the_vendor_comes_from_windows_or_stays_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_linears, 'CPUINFO', str(tmp_path / 'none'))
    monkeypatch.setenv('PROCESSOR_IDENTIFIER', 'AMD64 Family 25 Model 97 Stepping 2, AuthenticAMD')
    avx512 = torch.backends.cpu.get_cpu_capability() == 'AVX512'
    assert cpu_linears.cpu_facts() == ('AuthenticAMD', avx512, 25)
    monkeypatch.setenv('PROCESSOR_IDENTIFIER', 'AMD64, AuthenticAMD')  # no family to read: plain, and said so
    assert cpu_linears.cpu_facts() == ('AuthenticAMD', avx512, None)
    assert not cpu_linears.onednn_pays('AuthenticAMD', True, None)
    assert cpu_linears.describe_cpu('AuthenticAMD', True, None) == 'AMD with AVX-512, family unknown'
    monkeypatch.delenv('PROCESSOR_IDENTIFIER')  # a Mac
    assert cpu_linears.cpu_facts() == (None, avx512, None) and not cpu_linears.onednn_pays(*cpu_linears.cpu_facts())


@pytest.mark.skipif(not os.path.exists('/proc/cpuinfo'), reason="reads this machine's /proc/cpuinfo (Linux)")
def test_this_machine_reads_as_its_model_name_and_torch_say():
    with open('/proc/cpuinfo') as f:
        model_name = re.search(r'^model name\s*:(.*)$', f.read(), re.MULTILINE)
    vendor, avx512, _ = cpu_linears.cpu_facts()
    if model_name and ('AMD' in model_name[1]) != ('Intel' in model_name[1]):  # not a hypervisor's made-up name
        assert vendor == ('AuthenticAMD' if 'AMD' in model_name[1] else 'GenuineIntel'), model_name[1]
    if 'ATEN_CPU_CAPABILITY' not in os.environ:  # torch's own detection, unless told to run less
        assert avx512 == (torch.backends.cpu.get_cpu_capability() == 'AVX512')


def test_settings_that_cannot_work_are_one_line_errors(monkeypatch, refused):
    with refused('--onednn takes auto, True or False', "'maybe'"):
        cpu_linears.resolve_onednn('maybe', 'cpu', 'float32', False)
    pretend_onednn_runs(monkeypatch)
    for dtype, compile in (('bfloat16', False), ('float32', True)):
        with refused('--onednn=True needs an x86-64 CPU, --dtype=float32, --compile=False', 'use --onednn=auto'):
            cpu_linears.resolve_onednn(True, 'cpu', dtype, compile)
    pretend_onednn_runs(monkeypatch, machine='aarch64')
    with refused('--onednn=True needs an x86-64 CPU'):
        cpu_linears.resolve_onednn(True, 'cpu', 'float32', False)


def test_a_resumed_run_follows_the_rule_not_the_choice_its_checkpoint_recorded(run, trained):
    # checkpoints no longer record the choice; an older one that did still resumes, on this machine's path
    use, reason = cpu_linears.resolve_onednn('auto', 'cpu', 'float32', False)
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=False)
    assert 'onednn' not in checkpoint
    torch.save({**checkpoint, 'onednn': not use}, trained / 'ckpt.pt')
    out = run('train.py', '--dataset=tiny', *TINY_MODEL, '--onednn=auto', '--init_from=resume', '--out_dir=out',
              f'--max_iters={checkpoint["iter_num"] + 2}').stdout
    assert next(line for line in out.splitlines() if line.startswith('device ')).endswith(describe(use, reason))
