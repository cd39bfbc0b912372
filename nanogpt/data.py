"""
Datasets on disk, in the original's format: train.bin and val.bin (uint16 token ids) and an
optional meta.pkl (a character vocabulary, or a BPE of the dataset's own, and uint32 ids where its
vocabulary outgrows uint16): reading them, checking them, writing them, and train.py's batches.
"""
import os
import pickle

import numpy as np

from nanogpt.report import fail
from nanogpt.tokens import CHAT_TOKENS, GPT2_CHAT_IDS, GPT2_EOT, bpe_tokenizer

# torch is imported where tensors are made, not here: the prepare scripts read and write data
# without it and start a second sooner


def dataset_setting(out_dir):
    """The --dataset that makes train.py read a dataset prepared into out_dir: train.py reads
    data/<dataset>, so the path under data/ (out_dir itself when it is elsewhere)."""
    relative = os.path.relpath(out_dir, 'data')
    return out_dir if relative.startswith('..') else relative


def dataset_paths(data_dir):
    return {split: os.path.join(data_dir, f'{split}.bin') for split in ('train', 'val')}


def token_dtype(meta):
    """How a dataset's .bin files store token ids: uint16 (the original's format) unless its
    meta.pkl says uint32, which data/prepare.py writes for vocabularies above 65,536."""
    return np.dtype((meta or {}).get('dtype', 'uint16'))


def check_dataset(data_dir, dataset):
    """Check that a dataset is prepared; return its meta.pkl contents, or None without one."""
    prepare = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', dataset, 'prepare.py')
    hint = f"run python {os.path.relpath(prepare)} first" if os.path.exists(prepare) else \
        f"put train.bin and val.bin (uint16 token ids) in {data_dir}"
    if not os.path.isdir(data_dir):
        fail(f"dataset folder {data_dir} does not exist; {hint}")
    meta = read_meta(os.path.join(data_dir, 'meta.pkl'), hint)
    dtype = token_dtype(meta)
    for path in dataset_paths(data_dir).values():
        if not os.path.exists(path):
            fail(f"{path} is missing, the dataset is not prepared; {hint}")
        if os.path.getsize(path) % dtype.itemsize:
            fail(f"{path} is not a whole number of {dtype} token ids ({os.path.getsize(path)} bytes); "
                 f"prepare it again")
    return meta


def read_meta(path, hint="prepare the dataset again"):
    """A dataset's tokenizer (meta.pkl: vocab_size, and a character vocabulary's stoi and itos, or
    data/prepare.py's BPE as tokenizer='bpe' with its tokenizer_json), or None for GPT-2 BPE."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, 'rb') as f:
            meta = pickle.load(f)
        int(meta['vocab_size'])
    except Exception as e:
        fail(f"{path} is unreadable ({type(e).__name__}); {hint}")
    return meta


def write_meta(out_dir, meta):
    """out_dir/meta.pkl, read back by read_meta."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)


FULL_SCAN_BYTES = 1 << 30  # .bin files up to this size are scanned for bad token ids before training


def check_bins(paths, block_size, vocab_size, dtype=np.dtype('uint16')):
    """Each split must hold a whole block plus its target, and (if small enough to scan) no token id
    the model cannot embed. Returns the splits that were not scanned: their batches must be checked
    as they are read (load_blocks' vocab_size)."""
    unscanned = set()
    for split, path in paths.items():
        tokens = os.path.getsize(path) // dtype.itemsize
        if tokens < block_size + 1:
            fail(f"{path} holds {tokens} tokens, fewer than block_size + 1 = {block_size + 1}; "
                 f"use a smaller --block_size or more data")
        if tokens * dtype.itemsize > FULL_SCAN_BYTES:
            unscanned.add(split)
        elif max_token(path, dtype) >= vocab_size:
            fail(f"{path} has token ids >= the model's vocab_size ({vocab_size}); "
                 f"prepare the dataset again or train a model with a larger vocabulary")
    return unscanned


def load_blocks(path, starts, block_size, runtime, vocab_size=None, dtype=np.dtype('uint16')):
    """Blocks of block_size + 1 tokens starting at starts, from a memory-mapped .bin, on the device.
    The memmap is opened per call, so that pages already read do not pile up in resident memory;
    on CUDA the copy goes through pinned memory and overlaps with compute. With vocab_size, the
    token ids are checked here, on the host, where it costs no wait for the GPU."""
    data = np.memmap(path, dtype=dtype, mode='r')
    blocks = data[np.asarray(starts)[:, None] + np.arange(block_size + 1)]
    if vocab_size is not None and blocks.max() >= vocab_size:
        fail(f"{path} has token ids >= vocab_size ({vocab_size}); prepare the dataset again",
             every_rank=True)  # only this rank's batch found it
    return to_device(blocks.astype(np.int64), runtime)


def to_device(array, runtime):
    """A numpy array as a tensor on the runtime's device; on CUDA through pinned memory, so that the
    copy overlaps with compute."""
    import torch
    tensor = torch.from_numpy(array)
    if runtime.device_type == 'cuda':
        return tensor.pin_memory().to(runtime.device, non_blocking=True)
    return tensor.to(runtime.device)


def max_token(path, dtype=np.dtype('uint16'), chunk_tokens=1 << 24):
    """The largest token id in a .bin file, read in bounded chunks rather than all at once."""
    largest = 0
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_tokens * dtype.itemsize):
            largest = max(largest, int(np.frombuffer(chunk, dtype=dtype).max()))
    return largest


def mask_paths(data_dir):
    """A chat dataset's masks (data/prepare_chat.py): 1 where a token is the assistant's; None for
    other datasets."""
    paths = {split: os.path.join(data_dir, f'{split}_mask.bin') for split in ('train', 'val')}
    return paths if all(os.path.exists(p) for p in paths.values()) else None


class Blocks:
    """Where train.py's batches come from: rows of block_size tokens and their next tokens, read
    from a dataset's memory-mapped .bin files at starts drawn with the caller's generator. Rows
    start anywhere (batching='random'), or at documents' first tokens ('documents'). A chat
    dataset's rows start at conversations (and at the user turns of those longer than a row), each
    with an assistant token to learn, and only the assistant's tokens are targets: the others are
    -1, which the loss ignores."""

    def __init__(self, data_dir, meta, block_size, vocab_size, batching):
        self.paths, self.dtype, self.block_size = dataset_paths(data_dir), token_dtype(meta), block_size
        self.vocab_size = vocab_size
        self.unscanned = check_bins(self.paths, block_size, vocab_size, self.dtype)  # checked per batch instead
        self.masks = mask_paths(data_dir)
        self.row_starts = document_rows('documents' if self.masks else batching, self.paths, meta, block_size,
                                        self.dtype)
        if self.masks:
            user = GPT2_CHAT_IDS['user'] if meta is None else bpe_tokenizer(meta).token_to_id(CHAT_TOKENS['user'])
            self.row_starts = {split: self._chat_rows(split, starts, user) for split, starts in self.row_starts.items()}

    def _chat_rows(self, split, starts, user):
        ids = np.memmap(self.paths[split], dtype=self.dtype, mode='r')
        mask = np.fromfile(self.masks[split], dtype=np.uint8)
        if len(mask) != len(ids):
            fail(f"{self.masks[split]} does not match {self.paths[split]} ({len(mask)} and {len(ids)} tokens); "
                 f"prepare the chat dataset again")
        ends = np.append(starts[1:], len(ids))  # a conversation runs to the next one's start
        long = [np.flatnonzero(ids[s + 1:e] == user) + s + 1 for s, e in zip(starts, ends) if e - s > self.block_size + 1]
        rows = np.unique(np.concatenate([starts, *long])) if long else starts
        rows = rows[rows < len(ids) - self.block_size]
        learned = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        rows = rows[learned[rows + self.block_size + 1] - learned[rows + 1] > 0]  # a row with nothing to learn: NaN
        if not len(rows):
            fail(f"{self.paths[split]} has no row of block_size = {self.block_size} tokens with an assistant token "
                 f"to learn; use a larger --block_size or conversations with shorter prompts")
        return rows

    def batch(self, split, batch_size, generator, runtime):
        return self.read(split, self.starts(split, batch_size, generator), runtime)

    def starts(self, split, batch_size, generator):
        import torch
        if self.row_starts:
            return self.row_starts[split][torch.randint(len(self.row_starts[split]), (batch_size,),
                                                        generator=generator).numpy()]
        n_tokens = os.path.getsize(self.paths[split]) // self.dtype.itemsize
        return torch.randint(n_tokens - self.block_size, (batch_size,), generator=generator).numpy()

    def read(self, split, starts, runtime):
        """Inputs and targets of the rows at starts, on the runtime's device."""
        tokens = load_blocks(self.paths[split], starts, self.block_size, runtime,
                             self.vocab_size if split in self.unscanned else None, self.dtype)
        x, y = tokens[:, :-1], tokens[:, 1:]
        if self.masks:
            learned = load_blocks(self.masks[split], starts, self.block_size, runtime, dtype=np.dtype('uint8'))
            y = y.masked_fill(learned[:, 1:] == 0, -1)
        return x, y


def document_rows(batching, paths, meta, block_size, dtype):
    """For batching='documents': where each split's documents begin, the starts a row may take;
    None for batching='random', whose rows start anywhere."""
    if batching not in ('random', 'documents'):
        fail(f"batching must be 'random' or 'documents', not {batching!r}")
    if batching == 'random':
        return None
    eot = GPT2_EOT if meta is None else meta.get('eot')
    if eot is None:
        fail(f"batching='documents' needs documents, and {os.path.dirname(paths['train'])} has no end-of-text "
             f"token (a character vocabulary of one text); prepare it with data/prepare.py, or batch at random")
    rows = {split: document_starts(path, eot, block_size, dtype) for split, path in paths.items()}
    for split, starts in rows.items():
        if not len(starts):
            fail(f"{paths[split]} has no document with block_size + 1 = {block_size + 1} tokens after its start; "
                 f"use a smaller --block_size or batch at random")
    return rows


def document_starts(path, eot, block_size, dtype=np.dtype('uint16'), chunk_tokens=1 << 24):
    """Where the documents of a .bin file begin (its first token, and each one after an end-of-text
    token), leaving out those too near the end for a block: the rows of batching='documents'."""
    n_tokens = os.path.getsize(path) // dtype.itemsize
    ids = np.memmap(path, dtype=dtype, mode='r')
    starts = [np.zeros(1, dtype=np.int64)]
    for offset in range(0, n_tokens, chunk_tokens):
        starts.append(np.flatnonzero(ids[offset:offset + chunk_tokens] == eot).astype(np.int64) + offset + 1)
    starts = np.concatenate(starts)
    return starts[starts < n_tokens - block_size]


def write_bins(out_dir, train_ids, val_ids):
    """train.bin and val.bin: token ids as raw uint16, the original's format."""
    os.makedirs(out_dir, exist_ok=True)
    for name, ids in (('train', train_ids), ('val', val_ids)):
        ids = np.asarray(ids)
        if ids.size and ids.max() >= 2 ** 16:
            fail(f"token id {ids.max()} does not fit in uint16 (the .bin format); use a smaller vocabulary, "
                 f"or data/prepare.py, which writes uint32 ids for larger ones")
        ids.astype(np.uint16).tofile(os.path.join(out_dir, f'{name}.bin'))
    print(f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens")


def write_characters(text, out_dir):
    """data/shakespeare_char/prepare.py's dataset: every distinct character of text a token, the first
    90% of the text in train.bin, the rest in val.bin, and meta.pkl with vocab_size, itos and stoi."""
    if len(text) < 2:
        fail("the text is too short to split into train and val")
    print(f"{len(text):,} characters")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    print(f"vocab size: {len(chars)}: {''.join(chars)!r}")
    ids = np.array([stoi[c] for c in text])
    split = int(len(ids) * 0.9)  # first 90% train, the rest val
    write_bins(out_dir, ids[:split], ids[split:])
    write_meta(out_dir, {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi})


