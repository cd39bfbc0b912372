"""model.py: shapes, initial loss, the original's parameter names, cropping, generation."""
import math

import pytest
import torch

from nanogpt import runtime
from model import GPT, GPTConfig

TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=65, dropout=0.0, bias=True)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def test_forward_shapes_and_loss():
    model = tiny_model()
    idx = torch.randint(65, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 65) and loss.shape == ()
    logits, loss = model(idx)  # no targets: only the last position, for generation
    assert logits.shape == (3, 1, 65) and loss is None


def test_token_losses_are_the_per_token_cross_entropy():
    model = tiny_model().eval()
    idx, targets = torch.randint(65, (3, 10)), torch.randint(65, (3, 10))
    targets[0, :4] = targets[2, 7:] = -1  # not counted: 0, and no logits computed for them
    with torch.no_grad():
        logits, mean_loss = model(idx, targets)
        expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1, reduction='none')
        losses = model.token_losses(idx, targets)
    assert losses.shape == (3, 10) and losses.dtype == torch.float32
    assert torch.allclose(losses, expected, atol=1e-6)
    assert (losses[0, :4] == 0).all() and (losses[2, 7:] == 0).all()
    assert abs(losses.sum().item() / (targets != -1).sum().item() - mean_loss.item()) < 1e-6


def test_loss_at_init_is_near_uniform():
    # a freshly initialised model predicts close to uniformly: loss ~ ln(vocab_size)
    model = tiny_model(vocab_size=500, n_embd=32)
    _, loss = model(torch.randint(500, (8, 16)), torch.randint(500, (8, 16)))
    assert abs(loss.item() - math.log(500)) < 0.1


def test_state_dict_keys_are_the_original_nanogpt_names():
    keys = set(tiny_model(n_layer=1).state_dict())
    block = ['ln_1.weight', 'ln_1.bias', 'attn.c_attn.weight', 'attn.c_attn.bias', 'attn.c_proj.weight',
             'attn.c_proj.bias', 'ln_2.weight', 'ln_2.bias', 'mlp.c_fc.weight', 'mlp.c_fc.bias',
             'mlp.c_proj.weight', 'mlp.c_proj.bias']
    expected = {'transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight',
                'transformer.ln_f.bias', 'lm_head.weight'} | {f'transformer.h.0.{k}' for k in block}
    assert keys == expected
    no_bias = set(tiny_model(n_layer=1, bias=False).state_dict())
    assert no_bias == {k for k in expected if not k.endswith('.bias')}


def test_weights_are_tied_and_residual_projections_scaled():
    model = tiny_model(n_layer=4, n_embd=64, vocab_size=1000)
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 4)) < 0.002
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    # the shared matrix counts once; position embeddings only when asked
    n_all = sum(p.numel() for p in model.parameters())
    assert model.get_num_params(non_embedding=False) == n_all
    assert model.get_num_params() == n_all - 16 * 64


def test_n_embd_must_divide_by_n_head():
    with pytest.raises(ValueError, match='divisible'):
        tiny_model(n_embd=30, n_head=4)


def test_fallback_attention_matches_fused():
    model = tiny_model().eval()
    idx = torch.randint(65, (2, 12))
    fused, _ = model(idx, idx)
    for block in model.transformer.h:
        block.attn.flash = False
    manual, _ = model(idx, idx)
    torch.testing.assert_close(fused, manual, rtol=1e-5, atol=1e-5)


def test_crop_block_size():
    model = tiny_model()
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape == (8, 16)
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError):
        model.crop_block_size(32)


def test_configure_optimizers_decays_only_matrices():
    model = tiny_model()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = optimizer.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() == 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() == 1 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))
    assert decay['fused'] is True  # this torch has a fused AdamW for the CPU


def test_generate_crops_context_and_is_reproducible():
    model = tiny_model().eval()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    torch.manual_seed(1)
    out = model.generate(prompt, 40, temperature=0.9, top_k=5)  # 41 tokens > block_size 16
    assert out.shape == (2, 41) and out.max() < 65
    torch.manual_seed(1)
    assert torch.equal(out, model.generate(prompt, 40, temperature=0.9, top_k=5))


def test_generate_top_k_one_is_greedy():
    model = tiny_model().eval()
    prompt = torch.randint(65, (1, 4))
    out = model.generate(prompt, 5, top_k=1)
    idx = prompt
    for _ in range(5):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_estimate_mfu():
    model = tiny_model()
    # flops for one iteration of 4 sequences, done in exactly the time the peak would take
    flops = model.flops_per_token() * 16 * 4
    assert model.estimate_mfu(4, dt=1.0, peak_flops=flops) == pytest.approx(1.0)


def test_kv_cache_gives_the_same_tokens_as_recomputing(monkeypatch):
    model = tiny_model(bias=False).eval()
    prompt = torch.randint(65, (2, 3))
    lengths = []
    forward = GPT.forward
    monkeypatch.setattr(GPT, 'forward', lambda self, idx, *a, **k: lengths.append(idx.size(1)) or forward(self, idx, *a, **k))
    for temperature, top_k in ((1.0, None), (0.7, 5), (1.3, 20)):
        torch.manual_seed(3)
        cached = model.generate(prompt, 30, temperature=temperature, top_k=top_k)  # 33 > block_size 16: it slides
        lengths.clear()
        torch.manual_seed(3)
        plain = model.generate(prompt, 30, temperature=temperature, top_k=top_k, use_cache=False)
        assert torch.equal(cached, plain)
    torch.manual_seed(3)
    lengths.clear()
    model.generate(prompt, 30)
    # the prompt once, then one token per step until the window is full, then the cropped window each step
    assert lengths == [3] + [1] * 13 + [16] * 16


def test_kv_cache_with_a_prompt_longer_than_the_block():
    model = tiny_model().eval()
    prompt = torch.randint(65, (1, 40))
    torch.manual_seed(0)
    cached = model.generate(prompt, 10, top_k=10)
    torch.manual_seed(0)
    assert torch.equal(cached, model.generate(prompt, 10, top_k=10, use_cache=False))


def test_sliding_by_half_a_window_is_the_same_with_and_without_the_cache(monkeypatch):
    model = tiny_model().eval()
    prompt = torch.randint(65, (1, 2))
    torch.manual_seed(5)
    plain = model.generate(prompt, 40, temperature=0.8, top_k=10, use_cache=False, slide_to=8)
    lengths = []
    forward = GPT.forward
    monkeypatch.setattr(GPT, 'forward', lambda self, idx, *a, **k: lengths.append(idx.size(1)) or forward(self, idx, *a, **k))
    torch.manual_seed(5)
    assert torch.equal(plain, model.generate(prompt, 40, temperature=0.8, top_k=10, slide_to=8))
    # when the 16-token window overflows, it restarts from the last 8 tokens, then grows a token at a time
    assert lengths[:24] == [2] + [1] * 14 + [8] + [1] * 8


@pytest.mark.parametrize('rotary', [False, True])
def test_static_cache_gives_the_same_tokens_as_the_growing_one(rotary):
    # decode_step=model: the static path eager; a whole-buffer masked attention, equal up to rounding
    model = tiny_model(rotary=rotary).eval()
    for prompt, slide_to, flash in ((torch.randint(65, (2, 3)), 8, True), (torch.randint(65, (1, 40)), 16, True),
                                    (torch.randint(65, (2, 1)), 8, False)):
        for block in model.transformer.h:
            block.attn.flash = flash
        torch.manual_seed(4)
        growing = model.generate(prompt, 30, temperature=0.8, top_k=10, slide_to=slide_to)
        torch.manual_seed(4)
        assert torch.equal(growing, model.generate(prompt, 30, temperature=0.8, top_k=10, slide_to=slide_to,
                                                   decode_step=model))
    with pytest.raises(ValueError, match='use_cache'):
        model.generate(prompt, 2, use_cache=False, decode_step=model)


def test_compiled_decode_step_compiles_once_with_rotary_positions():
    # sample.py's test covers learned positions; here the rotary tables come from a position tensor
    model = tiny_model(rotary=True).eval()
    prompt = torch.randint(65, (2, 3))
    torch.manual_seed(6)
    eager = model.generate(prompt, 40, top_k=10, slide_to=8)  # slides four times, each a new static cache
    before = runtime.compile_counts()
    torch.manual_seed(6)
    compiled = model.generate(prompt, 40, top_k=10, slide_to=8, decode_step=torch.compile(model))
    after = runtime.compile_counts()
    assert torch.equal(compiled, eager)
    assert {key: after[key] - before[key] for key in after} == dict(graphs=1, graph_breaks=0, recompiles=0)
