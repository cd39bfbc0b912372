"""GPT-2: BPE data, weights from Hugging Face (exact logits), finetuning, export back out.
No downloads: the tests make small random GPT2LMHeadModels of their own."""
import pickle

import numpy as np
import pytest
import torch

from conftest import SHAKESPEARE, needs_bpe, random_hf_gpt2, sample_text
from model import GPT

transformers = pytest.importorskip('transformers')


def our_logits(model, idx):
    return model(idx, torch.zeros_like(idx))[0]  # with targets: logits at every position


def test_from_pretrained_gives_the_same_logits_as_hugging_face(tmp_path):
    hf_model = random_hf_gpt2(tmp_path / 'hf')
    model = GPT.from_pretrained(str(tmp_path / 'hf')).eval()
    assert model.config.gelu_approximate == 'tanh' and model.config.bias is True
    idx = torch.randint(100, (2, 64))
    with torch.no_grad():
        expected, got = hf_model(idx).logits, our_logits(model, idx)
        assert (expected - got).abs().max().item() <= 1e-4
        # the test can tell: exact GELU in place of GPT-2's tanh approximation does not pass it
        for block in model.transformer.h:
            block.mlp.gelu.approximate = 'none'
        assert (expected - our_logits(model, idx)).abs().max().item() > 1e-4


def test_from_pretrained_exact_gelu_and_overrides(tmp_path):
    hf_model = random_hf_gpt2(tmp_path / 'hf', activation='gelu')
    model = GPT.from_pretrained(str(tmp_path / 'hf'), dict(dropout=0.1))
    assert model.config.gelu_approximate == 'none' and model.config.dropout == 0.1
    idx = torch.randint(100, (1, 20))
    with torch.no_grad():
        assert (hf_model(idx).logits - our_logits(model.eval(), idx)).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match='only dropout'):
        GPT.from_pretrained(str(tmp_path / 'hf'), dict(n_layer=3))
    with pytest.raises(ValueError, match='neither'):
        GPT.from_pretrained('gpt3')


def test_export_round_trip(run, trained, tmp_path):
    result = run('export_hf.py', '--out_dir=out', '--export_dir=exported')
    assert 'exported out/ckpt.pt' in result.stdout
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    ours = GPT(__import__('model').GPTConfig(**checkpoint['model_args'])).eval()
    ours.load_state_dict(checkpoint['model'])
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'exported').eval()
    idx = torch.randint(checkpoint['model_args']['vocab_size'], (2, 16))
    with torch.no_grad():
        assert (hf_model(idx).logits - our_logits(ours, idx)).abs().max().item() <= 1e-4
        back = GPT.from_pretrained(str(tmp_path / 'exported')).eval()
        assert (our_logits(back, idx) - our_logits(ours, idx)).abs().max().item() <= 1e-5
    # the character vocabulary travels along, so sampling from the exported folder decodes right
    assert pickle.loads((tmp_path / 'exported' / 'meta.pkl').read_bytes()) == checkpoint['meta']
    text = run('sample.py', '--init_from=exported', '--num_samples=1', '--max_new_tokens=20', '--start=the').stdout
    assert text.startswith('the') and len(text.split('\n---------------')[0]) == 23


@needs_bpe
def test_prepare_shakespeare_bpe(run, tmp_path):
    (tmp_path / 'small.txt').write_text(sample_text(5000))
    result = run('data/shakespeare/prepare.py', '--input_file=small.txt', '--out_dir=data/bpe')
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    text = sample_text(5000)
    train = np.fromfile(tmp_path / 'data' / 'bpe' / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'data' / 'bpe' / 'val.bin', dtype=np.uint16)
    assert enc.decode(train.tolist()) == text[:int(len(text) * 0.9)]
    assert enc.decode(val.tolist()) == text[int(len(text) * 0.9):]
    assert f"train has {len(train):,} tokens" in result.stdout
    assert not (tmp_path / 'data' / 'bpe' / 'meta.pkl').exists()  # no meta: GPT-2 BPE


@needs_bpe
@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tiny Shakespeare is not in ../shared/data")
def test_prepare_shakespeare_bpe_counts(run):
    result = run('data/shakespeare/prepare.py', f'--input_file={SHAKESPEARE}', '--out_dir=.')
    assert 'train has 301,966 tokens, val has 36,059 tokens' in result.stdout


@pytest.mark.slow
@needs_bpe
def test_finetune_a_pretrained_model_then_resume_and_sample(run, tmp_path):
    (tmp_path / 'small.txt').write_text(sample_text(20_000))
    run('data/shakespeare/prepare.py', '--input_file=small.txt', '--out_dir=data/bpe')
    random_hf_gpt2(tmp_path / 'pretrained', vocab_size=50257, scale=1.0)
    # the model's shape comes from the pretrained model; block_size may shrink it
    run('train.py', '--dataset=bpe', '--init_from=pretrained', '--block_size=32', '--batch_size=4', '--max_iters=6',
        '--eval_interval=3', '--eval_iters=2', '--gradient_accumulation_steps=1', '--device=cpu', '--out_dir=ft')
    checkpoint = torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)
    assert checkpoint['model_args'] == dict(n_layer=2, n_head=4, n_embd=32, block_size=32, bias=True,
                                            vocab_size=50257, dropout=0.0)  # cropped from 64 to 32
    assert checkpoint['model_extra_args'] == {'gelu_approximate': 'tanh'}
    run('train.py', '--dataset=bpe', '--init_from=resume', '--out_dir=ft', '--max_iters=8', '--device=cpu',
        '--eval_iters=2', '--batch_size=4')
    # no meta.pkl anywhere: sample.py decodes with GPT-2 BPE
    text = run('sample.py', '--out_dir=ft', '--num_samples=1', '--max_new_tokens=10', '--start=ROMEO:').stdout
    assert text.startswith('ROMEO:')
    text = run('sample.py', '--init_from=pretrained', '--num_samples=1', '--max_new_tokens=10', '--start=Hi').stdout
    assert text.startswith('Hi')


def test_pretrained_shape_cannot_be_overridden(run, tmp_path, char_data):
    random_hf_gpt2(tmp_path / 'pretrained', vocab_size=100)
    result = run('train.py', '--dataset=tiny', '--init_from=pretrained', '--n_layer=5', '--device=cpu', expect=2)
    assert 'pretrained has n_layer=2, not 5' in result.stderr
