"""
Datasets on disk, in the original's format: train.bin and val.bin (uint16 token ids) and an
optional meta.pkl (a character vocabulary); reading them, checking them and writing them; and
text to token ids and back (a dataset's characters, or GPT-2's BPE through tiktoken).
"""

import os
import pickle
import sys

import numpy as np
import torch

from nanogpt.report import fail

def dataset_paths(data_dir):
    return {split: os.path.join(data_dir, f'{split}.bin') for split in ('train', 'val')}


def check_dataset(data_dir, dataset):
    """Check that a dataset is prepared; return its meta.pkl contents, or None without one."""
    prepare = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', dataset, 'prepare.py')
    hint = f"run python {os.path.relpath(prepare)} first" if os.path.exists(prepare) else \
        f"put train.bin and val.bin (uint16 token ids) in {data_dir}"
    if not os.path.isdir(data_dir):
        fail(f"dataset folder {data_dir} does not exist; {hint}")
    for path in dataset_paths(data_dir).values():
        if not os.path.exists(path):
            fail(f"{path} is missing, the dataset is not prepared; {hint}")
        if os.path.getsize(path) % 2:
            fail(f"{path} has an odd number of bytes, so it is not uint16 token ids; prepare it again")
    return read_meta(os.path.join(data_dir, 'meta.pkl'), hint)


def read_meta(path, hint="prepare the dataset again"):
    """A character vocabulary (meta.pkl: vocab_size, stoi, itos), or None where there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, 'rb') as f:
            meta = pickle.load(f)
        int(meta['vocab_size'])
    except Exception as e:
        fail(f"{path} is unreadable ({type(e).__name__}); {hint}")
    return meta


FULL_SCAN_BYTES = 1 << 30  # .bin files up to this size are scanned for bad token ids before training


def check_bins(paths, block_size, vocab_size):
    """Each split must hold a whole block plus its target, and (if small enough to scan) no token id
    the model cannot embed. Returns the splits that were not scanned: their batches must be checked
    as they are read (load_blocks' vocab_size)."""
    unscanned = set()
    for split, path in paths.items():
        tokens = os.path.getsize(path) // 2
        if tokens < block_size + 1:
            fail(f"{path} holds {tokens} tokens, fewer than block_size + 1 = {block_size + 1}; "
                 f"use a smaller --block_size or more data")
        if tokens * 2 > FULL_SCAN_BYTES:
            unscanned.add(split)
        elif max_token(path) >= vocab_size:
            fail(f"{path} has token ids >= the model's vocab_size ({vocab_size}); "
                 f"prepare the dataset again or train a model with a larger vocabulary")
    return unscanned


def load_blocks(path, starts, block_size, runtime, vocab_size=None):
    """Blocks of block_size + 1 tokens starting at starts, from a memory-mapped .bin, on the device.
    The memmap is opened per call, so that pages already read do not pile up in resident memory;
    on CUDA the copy goes through pinned memory and overlaps with compute. With vocab_size, the
    token ids are checked here, on the host, where it costs no wait for the GPU."""
    data = np.memmap(path, dtype=np.uint16, mode='r')
    blocks = data[np.asarray(starts)[:, None] + np.arange(block_size + 1)]
    if vocab_size is not None and blocks.max() >= vocab_size:
        fail(f"{path} has token ids >= vocab_size ({vocab_size}); prepare the dataset again",
             every_rank=True)  # only this rank's batch found it
    return to_device(blocks.astype(np.int64), runtime)


def to_device(array, runtime):
    """A numpy array as a tensor on the runtime's device; on CUDA through pinned memory, so that the
    copy overlaps with compute."""
    tensor = torch.from_numpy(array)
    if runtime.device_type == 'cuda':
        return tensor.pin_memory().to(runtime.device, non_blocking=True)
    return tensor.to(runtime.device)


def max_token(path, chunk_tokens=1 << 24):
    """The largest token id in a .bin file, read in bounded chunks rather than all at once."""
    largest = 0
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_tokens * 2):
            largest = max(largest, int(np.frombuffer(chunk, dtype=np.uint16).max()))
    return largest


def download(url, path, hint):
    """Fetch url into path (atomically: an interrupted download leaves no file), or a one-line error
    ending with hint."""
    import requests
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    print(f"downloading {url}", flush=True)
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as e:
        fail(f"could not download {url} ({type(e).__name__}); {hint}")
    with open(path + '.tmp', 'wb') as f:
        f.write(response.content)
    os.replace(path + '.tmp', path)


def read_text(input_file, default_file=None, url=None):
    """The text of input_file; without one, of default_file, first downloaded from url if missing."""
    if not input_file and not os.path.exists(default_file):
        download(url, default_file, f"download it yourself and save it as {os.path.relpath(default_file)}, "
                                    f"or pass --input_file=PATH")
    path = input_file or default_file
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path} as UTF-8 text ({e.strerror if isinstance(e, OSError) else e})")


def write_bins(out_dir, train_ids, val_ids):
    """train.bin and val.bin: token ids as raw uint16, the original's format."""
    os.makedirs(out_dir, exist_ok=True)
    for name, ids in (('train', train_ids), ('val', val_ids)):
        ids = np.asarray(ids)
        if ids.size and ids.max() >= 2 ** 16:
            fail(f"token id {ids.max()} does not fit in uint16 (the .bin format); use a smaller vocabulary")
        ids.astype(np.uint16).tofile(os.path.join(out_dir, f'{name}.bin'))
    print(f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens")


def load_tokenizer(meta):
    """encode/decode from a dataset's meta.pkl (character level), or GPT-2 BPE without one."""
    if meta is not None:
        stoi, itos = meta['stoi'], meta['itos']

        def encode(text):
            unknown = sorted(set(text) - stoi.keys())
            if unknown:
                fail(f"the prompt has characters this model's vocabulary lacks: {''.join(unknown)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    enc = gpt2_encoding()
    return (lambda text: enc.encode(text, allowed_special={'<|endoftext|>'})), enc.decode


class TextStream:
    """Print a sample as its tokens arrive. Each time, decode all the ids so far and print what is
    new, holding back a trailing incomplete character (a BPE token can end inside one)."""

    def __init__(self, decode, ids, out=sys.stdout):
        self.decode, self.ids, self.out, self.shown = decode, list(ids), out, 0
        self._show()

    def push(self, token_id):
        self.ids.append(token_id)
        self._show()

    def _show(self):
        text = self.decode(self.ids)
        if not text.endswith('\ufffd'):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, or a clear error when it can be neither downloaded nor found cached."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        fail(f"cannot load the GPT-2 BPE tokenizer ({type(e).__name__}); tiktoken downloads it once, or "
             f"set TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's cached copies of its files")
