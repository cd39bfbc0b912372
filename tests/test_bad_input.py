"""Every kind of bad input stops with one clear line on stderr and exit status 2, losing nothing:
each check called here as train.py and sample.py call it, and sample.py once as the user runs it.
(Mistakes in settings themselves are in test_configurator.py; DDP ones in test_ddp.py; that a refused
train.py leaves its out_dir as it was, in test_resume.py.)"""
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from model import GPT, GPTConfig
from nanogpt import checkpoints, data, models, out_dirs, runtime


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    """The scripts name their files relative to where they run: so do these tests, from tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_blocks(char_data, block_size=16):
    """The batches train.py would read from char_data (which checks its files first)."""
    meta = data.check_dataset(str(char_data), 'tiny')
    return data.Blocks(str(char_data), meta, block_size, meta['vocab_size'], 'random')


def test_dataset_not_prepared(refused, in_tmp_path):
    (in_tmp_path / 'data' / 'empty').mkdir(parents=True)
    with refused('data/empty/train.bin is missing, the dataset is not prepared'):
        data.check_dataset('data/empty', 'empty')


def test_missing_dataset_says_which_prepare_to_run(refused, in_tmp_path):
    with refused('data/shakespeare_char does not exist', 'data/shakespeare_char/prepare.py first'):
        data.check_dataset('data/shakespeare_char', 'shakespeare_char')


def test_bin_shorter_than_a_block(refused, char_data):
    np.arange(10, dtype=np.uint16).tofile(char_data / 'val.bin')
    with refused('val.bin holds 10 tokens, fewer than block_size + 1 = 17'):
        tiny_blocks(char_data)


def test_tokens_beyond_the_vocabulary(refused, char_data):
    meta = pickle.loads((char_data / 'meta.pkl').read_bytes())
    np.full(100, meta['vocab_size'] + 5, dtype=np.uint16).tofile(char_data / 'val.bin')
    with refused('val.bin has token ids >= the model\'s vocab_size'):
        tiny_blocks(char_data)


def test_n_embd_not_divisible_by_n_head(refused):
    with refused('n_embd (30) must be divisible by n_head (4)'):
        models.new_model(dict(n_layer=2, n_head=4, n_embd=30, block_size=16, vocab_size=65))


def test_unknown_dtype_and_device(refused):
    with refused("unknown dtype 'float8'"):
        runtime.resolve_dtype('float8', 'cpu')
    with refused("device 'tpu'"):
        runtime.resolve_device('tpu')


def test_impossible_device_is_a_clear_error(refused):
    if torch.cuda.is_available():
        pytest.skip("this machine has the CUDA GPU that the error is about")
    with refused('no CUDA'):
        runtime.resolve_device('cuda')


def test_out_dir_not_writable(refused, in_tmp_path):
    (in_tmp_path / 'a_file').write_text('not a folder')
    with refused('out_dir a_file/run is not writable'):
        out_dirs.ensure_writable('a_file/run')


def test_resume_without_a_checkpoint(refused, in_tmp_path):
    with refused('no checkpoint at empty/ckpt.pt'):
        checkpoints.load_checkpoint(checkpoints.latest_checkpoint('empty'))


def test_truncated_checkpoint(run, refused, trained, monkeypatch):
    good = (trained / 'ckpt.pt').read_bytes()
    (trained / 'ckpt.pt').write_bytes(good[:len(good) // 2])
    message = 'out/ckpt.pt is not a readable checkpoint'
    monkeypatch.chdir(trained.parent)
    with refused(message):  # train.py --init_from=resume
        checkpoints.load_checkpoint(checkpoints.latest_checkpoint('out'))
    # sample.py's mistakes reach its user as one line too
    assert_one_line_error(run('sample.py', '--out_dir=out', expect=None), message)


def test_foreign_checkpoints(refused, trained, monkeypatch):
    monkeypatch.chdir(trained.parent)
    model = torch.load('out/ckpt.pt', weights_only=True)['model']
    torch.save(model, 'out/ckpt.pt')  # a bare state_dict, as other programs save them
    with refused('not a nanoGPT checkpoint'):  # sample.py --out_dir=out
        models.inference_model('resume', 'out')
    (trained / 'ckpt.pt').write_bytes(pickle.dumps(ValueError('not torch at all')))
    with refused('not a readable checkpoint'):  # train.py --init_from=resume
        checkpoints.load_checkpoint('out/ckpt.pt')


def test_checkpoint_vocabulary_differs_from_dataset(refused, trained, monkeypatch):
    monkeypatch.chdir(trained.parent)
    checkpoint = checkpoints.load_checkpoint('out/ckpt.pt')
    model = models.model_from_checkpoint(checkpoint, 'out/ckpt.pt')
    other = {'vocab_size': 4, 'itos': dict(enumerate(' abc')), 'stoi': {c: i for i, c in enumerate(' abc')}}
    models.check_tokenizer(checkpoint, other, 'data/other')  # both character vocabularies: the sizes decide
    with refused("differs from data/other/meta.pkl (4)"):
        models.check_vocab_size(model, other, 'data/other')


def test_block_size_larger_than_the_checkpoint(refused, trained):
    checkpoint = checkpoints.load_checkpoint(trained / 'ckpt.pt')
    model = models.model_from_checkpoint(checkpoint, 'out/ckpt.pt')
    with refused('cannot resume with block_size=32: the checkpoint in out has block_size=16'):
        models.check_overrides(model, {'block_size': 32}, {'block_size'}, out_dir='out')


def test_relu_squared_in_float16_is_refused(refused):
    # relu(x)^2 overflows float16 past x = 256: refused up front rather than "diverged" mid-run
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=65, mlp='relu2'))
    with refused("mlp='relu2' overflows float16", '--dtype=bfloat16'):
        runtime.place_model(model, SimpleNamespace(dtype='float16', device='cpu', onednn=False))
