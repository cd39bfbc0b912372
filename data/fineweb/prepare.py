"""
Prepare FineWeb-Edu (sample-10BT: about 10B GPT-2 tokens of educational web pages) for GPT-2
training, the data Karpathy's build-nanogpt and llm.c reproduce GPT-2 (124M) on: GPT-2 BPE token
ids in train.bin and val.bin (uint16), read by train.py --dataset=fineweb (config/train_gpt2_fineweb.py).

$ python data/fineweb/prepare.py                          # ~10B tokens: train.bin ~20 GB
$ python data/fineweb/prepare.py --num_proc=32            # more tokenising (and downloading) workers
$ python data/fineweb/prepare.py --name=sample-100BT      # a bigger sample (~200 GB of train.bin)
$ python data/fineweb/prepare.py --dataset=json --data_files='shards/*.jsonl'   # local copies of it

The work is data/openwebtext/prepare.py's, imported from there: each document encoded with
encode_ordinary and followed by <|endoftext|>, 0.05% of the documents (seed 2357) split off for
val (about 5M tokens), and the .bin files written a shard at a time, so memory stays bounded. Expect
tens of GB of Hugging Face cache (the download, its Arrow copy, the token ids) besides the .bin files.
"""
import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location('openwebtext_prepare', os.path.join(_HERE, '..', 'openwebtext', 'prepare.py'))
openwebtext = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(openwebtext)  # its own work is under __main__: this only defines it

dataset = 'HuggingFaceFW/fineweb-edu'  # a Hugging Face dataset, or a builder such as 'json' with data_files
name = 'sample-10BT'  # the subset of the dataset on the hub (sample-10BT, sample-100BT, sample-350BT)
data_files = ''  # local files for such a builder instead of the hub, e.g. 'shards/*.jsonl'
text_column = 'text'  # the column that holds the documents
val_size = 0.0005  # the share of documents split off for val
split_seed = 2357
num_proc = 8  # tokenising (and downloading) workers; about half the CPU cores is a good start
out_dir = ''  # where train.bin and val.bin go; '' means beside this script (data/fineweb)

if __name__ == '__main__':
    from configurator import configure  # on the path: the OpenWebText script put the repo root there
    configure(globals())
    splits = openwebtext.load_splits(dataset, name, data_files, text_column, val_size, split_seed, num_proc)
    openwebtext.tokenize_and_write(splits, out_dir or _HERE, num_proc=num_proc, text_column=text_column)
