"""sample.py on a tiny trained model: its command line as a user runs it, and the functions it
samples with (nanogpt.models.inference_model, nanogpt.tokens.load_tokenizer, GPT.generate)."""
import sys

import pytest
import torch

from nanogpt import data, models, runtime, tokens
from conftest import load_script


def samples(stdout):
    """The samples sample.py printed: each is followed by a line of dashes."""
    return stdout.split('\n---------------\n')[:-1]


def sample_texts(out_dir, start, num_samples, max_new_tokens, seed=1337):
    """What `sample.py --out_dir=... --start=... --num_samples=... --seed=...` samples, in this process:
    the checkpoint's model and tokenizer, its default temperature and top_k, on the CPU."""
    runtime.setup_runtime('cpu', 'float32', False, seed=seed, onednn=False)
    model, meta, _ = models.inference_model('resume', str(out_dir))
    encode, decode = tokens.load_tokenizer(meta)
    prompt = torch.tensor([encode(start)])
    generated = model.eval().generate(prompt.expand(num_samples, -1), max_new_tokens, temperature=0.8, top_k=200)
    return [decode(ids.tolist()) for ids in generated]


def test_sample_decodes_with_the_training_vocabulary(trained):
    texts = sample_texts(trained, 'the king', num_samples=3, max_new_tokens=50)
    assert len(texts) == 3
    vocab = set(torch.load(trained / 'ckpt.pt', weights_only=True)['meta']['stoi'])
    for text in texts:
        assert text.startswith('the king') and len(text) == len('the king') + 50
        assert set(text) <= vocab


def test_sample_is_reproducible_with_a_seed(trained):
    first = sample_texts(trained, '\n', num_samples=1, max_new_tokens=30, seed=7)
    assert first == sample_texts(trained, '\n', num_samples=1, max_new_tokens=30, seed=7)
    assert first != sample_texts(trained, '\n', num_samples=1, max_new_tokens=30, seed=8)


def test_sample_uses_meta_pkl_for_checkpoints_without_a_vocabulary(trained, tmp_path, monkeypatch):
    # the original's checkpoints name their dataset; its meta.pkl (in data/, where sample.py runs) holds the vocabulary
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    del checkpoint['meta']
    torch.save(checkpoint, trained / 'ckpt.pt')
    monkeypatch.chdir(tmp_path)
    _, meta, _ = models.inference_model('resume', 'out')
    assert meta == data.read_meta(str(tmp_path / 'data' / 'tiny' / 'meta.pkl'))
    assert len(sample_texts('out', 'the', num_samples=2, max_new_tokens=5)) == 2


def test_sample_bad_input(refused, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with refused('no checkpoint at nowhere/ckpt.pt'):
        models.inference_model('resume', 'nowhere')
    # sample.py's checks of its command line, which stop it before it touches a model: sample.py works
    # at the top level, so loading it in this process runs it, sys.argv its command line. What is
    # compiled is the KV cache's step: without the cache there is nothing to compile
    deterministic = torch.are_deterministic_algorithms_enabled()
    for args, says in ((['--temperature=0'], 'sample.py: error: --temperature'), (['--top_k=0'], 'top_k'),
                       (['--start=FILE:missing.txt'], 'missing.txt'),
                       (['--device=cpu', '--compile=True', '--kv_cache=False'], '--kv_cache=True')):
        monkeypatch.setattr(sys, 'argv', ['sample.py', '--out_dir=out', *args])
        with refused(says):
            load_script('sample.py')
    torch.use_deterministic_algorithms(deterministic)  # as it was before sample.py set up a compiled run


@pytest.mark.slow
def test_sample_command_line_prompt_from_a_file_a_seed_and_a_compiled_decode(run, trained, tmp_path):
    # 40 tokens after an 8-token prompt in a 16-token block: the window slides (to 8 tokens) every 8
    # tokens, each time a new static cache filled by an eager forward of the context; the one-token step is
    # compiled once for all. Four samples: the shape gpu_check.py's rehearsal compiles (test_gpu_path.py)
    (tmp_path / 'prompt.txt').write_text('my lord\n')
    args = ['--out_dir=out', '--num_samples=4', '--max_new_tokens=40', '--start=FILE:prompt.txt', '--seed=7',
            '--device=cpu']
    eager = run('sample.py', *args)
    compiled = run('sample.py', *args, '--compile=True')
    # another process with the same seed, compiled or not: the same samples
    assert compiled.stdout == eager.stdout
    texts = samples(eager.stdout)
    assert len(texts) == 4 and all(text.startswith('my lord\n') and len(text) == len('my lord\n') + 40
                                   for text in texts)
    assert compiled.stderr.strip().splitlines()[-1] == 'compile: 1 graphs, 0 graph breaks, 0 recompiles'
    assert 'compile:' not in eager.stderr


def test_sample_and_eval_read_a_checkpoints_weights_on_the_cpu(trained, monkeypatch):
    # memory-mapped on the CPU: the optimizer state (twice the model with AdamW) is never read, nor
    # copied to a GPU; the caller moves the model alone
    loads, load = [], torch.load
    monkeypatch.setattr(torch, 'load', lambda *args, **kwargs: loads.append(kwargs) or load(*args, **kwargs))
    gpt, meta, name = models.inference_model('resume', str(trained))
    assert [(k['map_location'], k['mmap']) for k in loads] == [('cpu', True)]
    assert {p.device.type for p in gpt.parameters()} == {'cpu'} and meta['vocab_size'] == gpt.config.vocab_size
    assert 'ckpt.pt (iteration ' in name
