"""sample.py on a tiny trained model, run as a user would."""
import pytest
import torch

from nanogpt import checkpoints
from conftest import assert_one_line_error


def samples(stdout):
    """The samples sample.py printed: each is followed by a line of dashes."""
    return stdout.split('\n---------------\n')[:-1]


def test_sample_decodes_with_the_training_vocabulary(run, trained):
    result = run('sample.py', '--out_dir=out', '--num_samples=3', '--max_new_tokens=50', '--start=the king')
    texts = samples(result.stdout)
    assert len(texts) == 3
    vocab = set(torch.load(trained / 'ckpt.pt', weights_only=True)['meta']['stoi'])
    for text in texts:
        assert text.startswith('the king') and len(text) == len('the king') + 50
        assert set(text) <= vocab


def test_sample_is_reproducible_with_a_seed(run, trained):
    args = ['--out_dir=out', '--num_samples=1', '--max_new_tokens=30']
    first = run('sample.py', *args, '--seed=7').stdout
    assert first == run('sample.py', *args, '--seed=7').stdout
    assert first != run('sample.py', *args, '--seed=8').stdout


def test_sample_prompt_from_file(run, trained, tmp_path):
    (tmp_path / 'prompt.txt').write_text('my lord\n')
    text = samples(run('sample.py', '--out_dir=out', '--num_samples=1', '--max_new_tokens=5',
                       '--start=FILE:prompt.txt').stdout)[0]
    assert text.startswith('my lord\n')


def test_sample_uses_meta_pkl_for_checkpoints_without_a_vocabulary(run, trained, tmp_path):
    # the original's checkpoints name their dataset; its meta.pkl holds the vocabulary
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    del checkpoint['meta']
    torch.save(checkpoint, trained / 'ckpt.pt')
    assert len(samples(run('sample.py', '--out_dir=out', '--num_samples=2', '--max_new_tokens=5').stdout)) == 2


def test_sample_bad_input(run, trained):
    assert_one_line_error(run('sample.py', '--out_dir=nowhere', expect=None), 'no checkpoint at nowhere/ckpt.pt')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--temperature=0', expect=None), 'temperature')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--top_k=0', expect=None), 'top_k')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--start=FILE:missing.txt', expect=None), 'missing.txt')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--compile=True', '--kv_cache=False', expect=None),
                          '--kv_cache=True')


@pytest.mark.slow
def test_compiled_decode_compiles_once_and_gives_the_eager_tokens(run, trained):
    # 40 tokens past a 16-token block: the window slides (to 8 tokens) three times, each time a new
    # static cache filled by an eager forward of the context; the one-token step is compiled once for all
    args = ['--out_dir=out', '--num_samples=2', '--max_new_tokens=40', '--device=cpu', '--seed=3']
    eager = run('sample.py', *args)
    compiled = run('sample.py', *args, '--compile=True')
    assert compiled.stdout == eager.stdout and len(samples(compiled.stdout)) == 2
    assert compiled.stderr.strip().splitlines()[-1] == 'compile: 1 graphs, 0 graph breaks, 0 recompiles'
    assert 'compile:' not in eager.stderr


def test_sample_and_eval_read_a_checkpoints_weights_on_the_cpu(trained, monkeypatch):
    # memory-mapped on the CPU: the optimizer state (twice the model with AdamW) is never read, nor
    # copied to a GPU; the caller moves the model alone
    loads, load = [], torch.load
    monkeypatch.setattr(torch, 'load', lambda *args, **kwargs: loads.append(kwargs) or load(*args, **kwargs))
    gpt, meta, name = checkpoints.inference_model('resume', str(trained))
    assert [(k['map_location'], k['mmap']) for k in loads] == [('cpu', True)]
    assert {p.device.type for p in gpt.parameters()} == {'cpu'} and meta['vocab_size'] == gpt.config.vocab_size
    assert 'ckpt.pt (iteration ' in name
