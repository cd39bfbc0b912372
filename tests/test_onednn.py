"""oneDNN linears on the CPU: nn.Linear's numbers (outputs and all gradients), faster matmuls."""
import copy
import re

import pytest
import torch

from nanogpt import cpu_linears
from conftest import TINY_MODEL, assert_one_line_error
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


@needs_onednn
def test_train_measures_which_linears_are_faster_and_can_be_told(run, char_data):
    runs = {setting: run('train.py', '--dataset=tiny', *TINY_MODEL, '--max_iters=2', '--eval_interval=2',
                         f'--out_dir={setting}', f'--onednn={setting}').stdout
            for setting in ('auto', 'True', 'False')}
    runs = {setting: next(line for line in out.splitlines() if line.startswith('device ')) for setting, out in runs.items()}
    speedup = float(re.search(r'auto: (?:oneDNN measured )?([\d.]+)x', runs['auto']).group(1))
    assert ('oneDNN linears' in runs['auto']) == (speedup >= cpu_linears.ONEDNN_MARGIN)
    assert runs['True'].endswith('oneDNN linears') and 'oneDNN' not in runs['False']


def test_auto_takes_onednn_only_where_it_is_clearly_faster(monkeypatch):
    # the rule, on the times an AMD EPYC (MKL runs AVX2 there) and an Intel Xeon (MKL runs AVX-512) gave
    assert cpu_linears.prefer_onednn(plain_seconds=25.0, onednn_seconds=12.0)  # AMD: twice as fast
    assert not cpu_linears.prefer_onednn(plain_seconds=35.4, onednn_seconds=46.0)  # Intel: slower
    assert not cpu_linears.prefer_onednn(plain_seconds=10.3, onednn_seconds=10.0)  # a gain within the noise
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=65))
    # explicit settings are taken as given, and no GPU is measured
    monkeypatch.setattr(cpu_linears, 'time_linears', None)
    assert cpu_linears.resolve_onednn(False, 'cpu', 'float32', False, model, 64) == (False, None)
    assert cpu_linears.resolve_onednn('auto', 'cuda', 'float32', False, model, 64) == (False, None)
    monkeypatch.setattr(cpu_linears, 'onednn_usable', lambda *args: True)
    for plain, fast, expected in ((2.0, 1.0, True), (1.0, 1.0, False), (1.0, 1.3, False)):
        monkeypatch.setattr(cpu_linears, 'time_linears', lambda shapes, rows, use_onednn, backward: fast if use_onednn else plain)
        assert cpu_linears.resolve_onednn('auto', 'cpu', 'float32', False, model, 64) == (expected, plain / fast)


def test_timing_the_linears_leaves_the_random_state_alone():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=65))
    before = torch.get_rng_state()
    assert cpu_linears.time_linears(cpu_linears.linear_shapes(model), 64, False) > 0
    assert torch.equal(torch.get_rng_state(), before)
    assert sorted(cpu_linears.linear_shapes(model)) == [(16, 16, True, 1), (16, 48, True, 1), (16, 64, True, 1),
                                                   (16, 65, False, 1), (64, 16, True, 1)]


def test_onednn_settings_that_cannot_work_are_one_line_errors(run, char_data):
    for bad, says in (('--onednn=maybe', 'auto, True or False'), ('--onednn=True --dtype=bfloat16', 'float32')):
        assert_one_line_error(run('train.py', '--dataset=tiny', *TINY_MODEL, *bad.split(), '--max_iters=1', expect=None),
                              says)
