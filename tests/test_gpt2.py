"""GPT-2: BPE data, weights from Hugging Face (exact logits), finetuning, export back out.
No downloads: the tests make small random GPT2LMHeadModels of their own."""
import pickle

import numpy as np
import pytest
import torch

from conftest import SHAKESPEARE, needs_bpe
from made_up import random_hf_gpt2, sample_text
from model import GPT, GPTConfig
from nanogpt import data, models, tokens

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


def sample_from(init_from, start, max_new_tokens):
    """What `sample.py --init_from=... --start=... --num_samples=1` samples, in this process."""
    torch.manual_seed(1337)
    model, meta, _ = models.inference_model(init_from, out_dir=None)
    encode, decode = tokens.load_tokenizer(meta)  # GPT-2 BPE where the folder has no meta.pkl
    generated = model.eval().generate(torch.tensor([encode(start)]), max_new_tokens, temperature=0.8, top_k=200)
    return decode(generated[0].tolist())


def test_export_round_trip(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models.export_hf('out/ckpt.pt', 'exported')  # what export_hf.py --out_dir=out --export_dir=exported does
    assert 'exported out/ckpt.pt' in capsys.readouterr().out
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    ours = GPT(GPTConfig(**checkpoint['model_args'])).eval()
    ours.load_state_dict(checkpoint['model'])
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'exported').eval()
    idx = torch.randint(checkpoint['model_args']['vocab_size'], (2, 16))
    with torch.no_grad():
        assert (hf_model(idx).logits - our_logits(ours, idx)).abs().max().item() <= 1e-4
        back = GPT.from_pretrained(str(tmp_path / 'exported')).eval()
        assert (our_logits(back, idx) - our_logits(ours, idx)).abs().max().item() <= 1e-5
    # the character vocabulary travels along, so sampling from the exported folder decodes right
    assert pickle.loads((tmp_path / 'exported' / 'meta.pkl').read_bytes()) == checkpoint['meta']
    text = sample_from('exported', 'the', max_new_tokens=20)
    assert text.startswith('the') and len(text) == 23


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
    # GPT-2 BPE data as data/shakespeare/prepare.py writes it (tested above): no meta.pkl
    text, enc = sample_text(20_000), tokens.gpt2_encoding()
    data.write_bins(str(tmp_path / 'data' / 'bpe'), enc.encode_ordinary(text[:18_000]), enc.encode_ordinary(text[18_000:]))
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
    assert sample_from(str(tmp_path / 'pretrained'), 'Hi', max_new_tokens=10).startswith('Hi')


def test_pretrained_shape_cannot_be_overridden(refused, tmp_path):
    random_hf_gpt2(tmp_path / 'pretrained', vocab_size=100)
    model = models.pretrained_model(str(tmp_path / 'pretrained'))
    # what train.py --init_from=pretrained checks of the settings given: block_size may crop, n_layer may not
    models.check_overrides(model, {'block_size': 32}, {'block_size'}, pretrained='pretrained')
    with refused('pretrained has n_layer=2, not 5'):
        models.check_overrides(model, {'n_layer': 5}, {'n_layer'}, pretrained='pretrained')
