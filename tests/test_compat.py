"""Checkpoints move both ways between this repo and the original nanoGPT."""
import pickle

import torch

from conftest import TINY_MODEL
from model import GPT, GPTConfig
from nanogpt import models, tokens

ORIGINAL_MODEL_ARGS = {'n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout'}


def original_checkpoint(vocab_size, compiled=True):
    """A ckpt.pt as the original's train.py writes it: its keys only, a plain AdamW, best_val_loss as
    a tensor, and (from a torch.compile'd model) every weight under '_orig_mod.'."""
    model_args = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, bias=False, vocab_size=vocab_size, dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}], lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    prefix = '_orig_mod.' if compiled else ''
    return {'model': {prefix + k: v for k, v in model.state_dict().items()}, 'optimizer': optimizer.state_dict(),
            'model_args': model_args, 'iter_num': 20, 'best_val_loss': torch.tensor(2.5),
            'config': {'dataset': 'tiny', 'learning_rate': 1e-3}}


def test_original_checkpoint_resumes_and_samples_here(run, tmp_path, char_data, monkeypatch):
    vocab_size = pickle.loads((char_data / 'meta.pkl').read_bytes())['vocab_size']
    (tmp_path / 'out').mkdir()
    torch.save(original_checkpoint(vocab_size), tmp_path / 'out' / 'ckpt.pt')
    result = run('train.py', '--dataset=tiny', '--init_from=resume', '--max_iters=24', '--eval_interval=2',
                 '--device=cpu', '--eval_iters=2', '--batch_size=4', '--gradient_accumulation_steps=1')
    assert 'resuming from out/ckpt.pt at iteration 20 (best val loss 2.5000)' in result.stdout
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] >= 22
    # sample.py on an original checkpoint: the vocabulary comes from data/<dataset>/meta.pkl
    torch.save(original_checkpoint(vocab_size, compiled=False), tmp_path / 'out' / 'ckpt.pt')
    monkeypatch.chdir(tmp_path)
    model, meta, _ = models.inference_model('resume', 'out')
    encode, decode = tokens.load_tokenizer(meta)
    sample = model.eval().generate(torch.tensor([encode('the')]), max_new_tokens=8, top_k=200)
    text = decode(sample[0].tolist())
    assert text.startswith('the') and len(text) == 11


def test_our_checkpoint_has_what_the_original_loads(trained):
    # the original's sample.py and train.py do: torch.load (weights_only by default in torch >= 2.6),
    # GPTConfig(**model_args) with its seven fields, load_state_dict(strict) with its parameter names
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    assert set(checkpoint['model_args']) == ORIGINAL_MODEL_ARGS
    assert {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'} <= set(checkpoint)
    assert checkpoint['config']['dataset'] == 'tiny'
    reference = GPT(GPTConfig(**checkpoint['model_args'])).state_dict()
    assert set(checkpoint['model']) == set(reference)
    assert all(checkpoint['model'][k].shape == v.shape for k, v in reference.items())
    # the original's optimizer (a plain AdamW over the same two groups) takes our optimizer state
    model = GPT(GPTConfig(**checkpoint['model_args']))
    params = list(model.parameters())
    plain = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2]},
                               {'params': [p for p in params if p.dim() < 2]}])
    plain.load_state_dict(checkpoint['optimizer'])
    model.load_state_dict(checkpoint['model'])
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    plain.step()


def test_tiny_model_args_are_plain_values(trained):
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    assert all(type(v) in (int, float, bool) for v in checkpoint['model_args'].values())
    assert TINY_MODEL  # the trained fixture is the tiny model
