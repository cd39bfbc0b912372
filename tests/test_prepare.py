"""data/shakespeare_char/prepare.py: character vocabulary, 90/10 split, the original's file format. Its work
is nanogpt.download.read_text and nanogpt.data.write_characters, called here in-process but once."""
import pickle

import numpy as np
import pytest

from conftest import REPO, SHAKESPEARE
from nanogpt import data, download


def test_prepare_small_text(run, tmp_path):
    text = "hello world\nhow are you?\n" * 40
    (tmp_path / 'small.txt').write_text(text)
    result = run('data/shakespeare_char/prepare.py', '--input_file=small.txt', '--out_dir=prepared')
    meta = pickle.loads((tmp_path / 'prepared' / 'meta.pkl').read_bytes())
    chars = sorted(set(text))
    assert meta['vocab_size'] == len(chars)
    assert meta['stoi'] == {c: i for i, c in enumerate(chars)} and meta['itos'] == dict(enumerate(chars))
    train = np.fromfile(tmp_path / 'prepared' / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'prepared' / 'val.bin', dtype=np.uint16)
    split = int(len(text) * 0.9)
    assert ''.join(meta['itos'][i] for i in train) == text[:split]
    assert ''.join(meta['itos'][i] for i in val) == text[split:]
    assert f"vocab size: {len(chars)}" in result.stdout and f"train has {split:,} tokens" in result.stdout
    assert 'wrote train.bin, val.bin and meta.pkl to prepared' in result.stdout


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tiny Shakespeare is not in ../shared/data")
def test_prepare_tiny_shakespeare_counts(tmp_path, capsys):
    data.write_characters(download.read_text(str(SHAKESPEARE)), str(tmp_path))
    out = capsys.readouterr().out
    assert 'vocab size: 65' in out
    assert 'train has 1,003,854 tokens, val has 111,540 tokens' in out
    assert (tmp_path / 'train.bin').stat().st_size == 2 * 1_003_854


@pytest.mark.skipif((REPO / 'data' / 'shakespeare_char' / 'input.txt').exists(),
                    reason="input.txt is already beside prepare.py, so nothing is downloaded")
def test_prepare_without_file_or_network_names_url_and_place(refused):
    # an unreachable URL stands in for a machine without network
    with refused('could not download http://127.0.0.1:9/input.txt', 'data/shakespeare_char/input.txt'):
        download.read_text('', str(REPO / 'data' / 'shakespeare_char' / 'input.txt'), 'http://127.0.0.1:9/input.txt')


def test_prepare_missing_input_file(refused):
    with refused('nope.txt'):
        download.read_text('nope.txt')


def test_a_text_too_short_to_split(tmp_path, refused):
    with refused('the text is too short to split into train and val'):
        data.write_characters('a', str(tmp_path))
    assert not list(tmp_path.iterdir())
