"""data/fineweb/prepare.py: FineWeb-Edu's settings, and the OpenWebText script's work on small local data
(no hub access)."""
import json

import numpy as np
import pytest

from conftest import load_script, needs_bpe

datasets = pytest.importorskip('datasets')


def load_fineweb():
    return load_script('data/fineweb/prepare.py')


def test_asks_the_hub_for_fineweb_edu_sample_10bt(monkeypatch):
    fineweb = load_fineweb()
    assert (fineweb.dataset, fineweb.name) == ('HuggingFaceFW/fineweb-edu', 'sample-10BT')
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': [f"doc {i}" for i in range(4000)]})})
    monkeypatch.setattr(datasets, 'load_dataset', fake_load_dataset)
    splits = fineweb.openwebtext.load_splits(fineweb.dataset, fineweb.name, num_proc=1)
    assert calls == [('HuggingFaceFW/fineweb-edu', 'sample-10BT')]
    assert (len(splits['train']), len(splits['val'])) == (3998, 2)  # 0.05% for val


@needs_bpe
def test_prepare_local_json_shards(run, tmp_path):
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    docs = []
    for shard in range(3):  # FineWeb-Edu's columns: only text is read
        lines = []
        for i in range(10):
            text = f"Shard {shard}, page {i}: photosynthesis turns light into chemical energy. " * (1 + i % 3)
            docs.append(text)
            lines.append(json.dumps({'text': text, 'id': f'<urn:{shard}-{i}>', 'url': 'https://example.org',
                                     'score': 3.1, 'int_score': 3, 'token_count': 20}))
        (tmp_path / f'shard{shard}.jsonl').write_text('\n'.join(lines) + '\n')
    result = run('data/fineweb/prepare.py', '--dataset=json', f'--data_files={tmp_path}/shard*.jsonl',
                 '--val_size=0.1', '--num_proc=1', '--out_dir=data/fw', env={'HF_HOME': str(tmp_path / 'hf')})
    assert '27 train and 3 val documents' in result.stdout
    train = np.fromfile(tmp_path / 'data' / 'fw' / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'data' / 'fw' / 'val.bin', dtype=np.uint16)
    assert (train == enc.eot_token).sum() == 27 and (val == enc.eot_token).sum() == 3
    # every document, each followed by <|endoftext|>: the same tokens as encoding them one by one
    written = [enc.decode(doc.tolist()) for doc in np.split(np.concatenate([train, val]),
                                                             np.flatnonzero(np.concatenate([train, val]) == enc.eot_token) + 1)[:-1]]
    assert sorted(text.removesuffix('<|endoftext|>') for text in written) == sorted(docs)
    assert len(train) + len(val) == sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
