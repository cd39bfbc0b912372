"""data/openwebtext/prepare.py: tokenise-and-write on small local data (no hub access), its functions
called in-process, its command line run once."""

import numpy as np
import pytest

from conftest import load_script, needs_bpe

datasets = pytest.importorskip('datasets')


def load_prepare():
    return load_script('data/openwebtext/prepare.py')


@needs_bpe
def test_tokenize_and_write_in_shards(tmp_path):
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    docs = [f"Document number {i}. " + "Some words, some more words. " * (i % 7) for i in range(50)]
    splits = {'train': datasets.Dataset.from_dict({'text': docs[:45]}),
              'val': datasets.Dataset.from_dict({'text': docs[45:]})}
    # 8 documents per shard: several shards, written one after another
    counts = load_prepare().tokenize_and_write(splits, tmp_path, num_proc=1, docs_per_shard=8)
    for split, texts in (('train', docs[:45]), ('val', docs[45:])):
        ids = np.fromfile(tmp_path / f'{split}.bin', dtype=np.uint16)
        assert counts[split] == len(ids)
        expected = [t for text in texts for t in enc.encode_ordinary(text) + [enc.eot_token]]
        assert ids.tolist() == expected  # every document, in order, each followed by <|endoftext|>
    assert not list(tmp_path.glob('*.tmp'))


@needs_bpe
def test_prepare_local_text_files_with_workers(run, tmp_path):
    for i in range(6):
        (tmp_path / f'doc{i}.txt').write_text(f"text file {i}\nwith two lines\n")
    result = run('data/openwebtext/prepare.py', '--dataset=text', f'--data_files={tmp_path}/doc*.txt',
                 '--num_proc=2', '--out_dir=data/local', env={'HF_HOME': str(tmp_path / 'hf')})
    assert '5 train and 1 val documents' in result.stdout
    train = np.fromfile(tmp_path / 'data' / 'local' / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'data' / 'local' / 'val.bin', dtype=np.uint16)
    assert (train == 50256).sum() == 5 and (val == 50256).sum() == 1


def test_prepare_bad_dataset_is_a_clear_error(tmp_path, refused):
    with refused('no files match'):
        load_prepare().load_splits('text', data_files=f'{tmp_path}/none*.txt')
    (tmp_path / 'nothing').mkdir()  # a dataset `datasets` cannot load, without asking the Hub
    with refused(f"could not load dataset '{tmp_path}/nothing'"):
        load_prepare().load_splits(str(tmp_path / 'nothing'))
