"""
Prepare OpenWebText (or any Hugging Face text dataset, or local text files) for GPT-2 training:
GPT-2 BPE token ids in train.bin and val.bin, uint16, as in the original nanoGPT.

$ python data/openwebtext/prepare.py                      # OpenWebText: ~54 GB of HF cache, ~9B tokens
$ python data/openwebtext/prepare.py --num_proc=16        # more tokenising workers
$ python data/openwebtext/prepare.py --dataset=roneneldan/TinyStories --out_dir=data/tinystories
$ python data/openwebtext/prepare.py --dataset=text --data_files='corpus/*.txt' --out_dir=data/corpus
$ python data/fineweb/prepare.py                          # FineWeb-Edu sample-10BT, with this script's code

Each document is encoded with encode_ordinary and followed by the end-of-text token. Without a
validation split of its own, the dataset gives a small one (0.05%, seed 2357, shuffled, as in the
original). The .bin files are written a shard at a time, so memory stays bounded however large
the dataset; for OpenWebText expect train.bin ~17 GB (~9.0B tokens) and val.bin ~8.5 MB (~4.4M).
"""
import glob
import math
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nanogpt import report, tokens  # noqa: E402  (the repo root is on the path only from the line above)

dataset = 'openwebtext'  # a Hugging Face dataset name, or a builder such as 'text' or 'json' with data_files
name = ''  # the dataset's subset (configuration), e.g. 'sample-10BT' of HuggingFaceFW/fineweb-edu; '' for its default
data_files = ''  # local files for such a builder, e.g. 'corpus/*.txt' (each file is one document)
text_column = 'text'  # the column that holds the documents
val_size = 0.0005  # the share split off for val when the dataset has no validation split
split_seed = 2357
num_proc = 8  # tokenising (and downloading) workers; about half the CPU cores is a good start
out_dir = ''  # where train.bin and val.bin go; '' means beside this script


def tokenize_and_write(splits, out_dir, num_proc=1, text_column='text', docs_per_shard=16384):
    """Encode each split's documents with GPT-2 BPE, end-of-text after each, and write them to
    out_dir/<split>.bin one shard of documents at a time. Returns {split: number of tokens}."""
    import datasets
    enc = tokens.gpt2_encoding()

    def encode(example):
        ids = enc.encode_ordinary(example[text_column])
        ids.append(enc.eot_token)
        return {'ids': np.array(ids, dtype=np.uint16)}

    # uint16 in the Arrow cache too: a quarter of the disk (and memory-mapped pages) of int64
    features = datasets.Features({'ids': datasets.Sequence(datasets.Value('uint16'))})

    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, docs in splits.items():
        tokenized = docs.map(encode, remove_columns=docs.column_names, features=features, num_proc=num_proc,
                             desc=f"tokenizing {split}").with_format('numpy')
        path = os.path.join(out_dir, f'{split}.bin')
        n_shards = max(1, math.ceil(len(tokenized) / docs_per_shard))
        with open(path + '.tmp', 'wb') as f:
            for i in tqdm(range(n_shards), desc=f"writing {path}"):
                shard = tokenized.shard(num_shards=n_shards, index=i, contiguous=True)['ids']
                if len(shard):
                    f.write(np.concatenate(shard).astype(np.uint16).tobytes())
        os.replace(path + '.tmp', path)  # a half-written file never passes for a prepared one
        counts[split] = os.path.getsize(path) // 2
        print(f"{path}: {counts[split]:,} tokens")
    return counts


def load_splits(dataset, name='', data_files='', text_column='text', val_size=0.0005, split_seed=2357, num_proc=1):
    """{'train': ..., 'val': ...} documents of a Hugging Face dataset (with its subset name, if any) or
    of local files (data_files, with a builder such as 'text' or 'json' as dataset); a val split of
    val_size of the documents when the dataset has none. A one-line error for what cannot be loaded."""
    if data_files and '://' not in data_files and not glob.glob(data_files):
        report.fail(f"no files match --data_files={data_files}")
    from datasets import load_dataset
    try:
        if data_files:
            loaded = load_dataset(dataset, data_files=data_files, num_proc=num_proc,
                                  **({'sample_by': 'document'} if dataset == 'text' else {}))
        else:
            loaded = load_dataset(dataset, name or None, num_proc=num_proc)
    except Exception as e:
        report.fail(f"could not load dataset {dataset!r} ({type(e).__name__}: {str(e).splitlines()[0][:150]}); "
                    f"for local files use --dataset=text --data_files='path/*.txt'")
    if text_column not in loaded['train'].column_names:
        report.fail(f"dataset {dataset!r} has no column {text_column!r} (it has {loaded['train'].column_names}); "
                    f"name it with --text_column")
    val_name = next((split for split in ('validation', 'val') if split in loaded), None)
    if val_name:
        splits = {'train': loaded['train'], 'val': loaded[val_name]}
    else:
        split = loaded['train'].train_test_split(test_size=val_size, seed=split_seed, shuffle=True)
        splits = {'train': split['train'], 'val': split['test']}
    print(f"{len(splits['train']):,} train and {len(splits['val']):,} val documents")
    return splits


if __name__ == '__main__':
    from configurator import configure
    configure(globals())
    out_dir = out_dir or os.path.dirname(os.path.abspath(__file__))
    splits = load_splits(dataset, name, data_files, text_column, val_size, split_seed, num_proc)
    tokenize_and_write(splits, out_dir, num_proc=num_proc, text_column=text_column)
