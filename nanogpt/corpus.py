"""
A corpus of your own, for data/prepare.py: its documents read one at a time (text files, JSON
lines, Parquet, a Hugging Face dataset), split into train and validation by documents, and encoded
by several processes straight into train.bin and val.bin, each document followed by end-of-text.
Nothing holds the whole corpus: memory stays bounded on corpora larger than RAM.

A document arrives as pieces (text, last, is_val): a long text file comes in pieces of about a
megabyte, cut only after a line break that a non-space character follows. No GPT-2-style
pre-token spans such a cut, so BPE gives the same ids as on the whole text.
"""
import collections
import json
import math
import multiprocessing
import os
import random

import numpy as np

from nanogpt.report import fail

SUFFIXES = ('.txt', '.jsonl', '.parquet')
PIECE_CHARS = 1 << 20  # a text file's pieces: about this many characters
BATCH_CHARS = 1 << 21  # the work one process encodes at a time
PARALLEL_BYTES = 16 << 20  # smaller corpora are encoded in this process: starting others costs more


def source_files(input):
    """input itself, or the .txt, .jsonl and .parquet files under a folder, in a fixed order."""
    if not os.path.isdir(input):
        return [input]
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(input) for name in names
                   if name.endswith(SUFFIXES))
    if not files:
        fail(f"{input} holds no .txt, .jsonl or .parquet files")
    return files


def _decoded(path, raw, offset, errors):
    try:
        return raw.decode('utf-8', errors=errors)
    except UnicodeDecodeError as e:
        fail(f"{path} is not UTF-8 text: byte {offset + e.start} is {raw[e.start:e.start + 1]!r}; convert it "
             f"to UTF-8, or pass --utf8_errors=replace to read bad bytes as U+FFFD")


def _text_pieces(path, errors, cut_at=None):
    """(text, last) pieces of a text file: one document, or two where cut_at (a byte offset) is
    given: the text before the first line that starts at or after it, and the rest."""
    pieces, size, offset = [], 0, 0
    with open(path, 'rb') as f:
        for raw in f:
            line = _decoded(path, raw, offset, errors)
            at_cut = cut_at is not None and offset >= cut_at
            if pieces and (at_cut or (size >= PIECE_CHARS and not line[:1].isspace())):
                yield ''.join(pieces), at_cut
                pieces, size = [], 0
            if at_cut:
                cut_at = None
            pieces.append(line)
            size += len(line)
            offset += len(raw)
    yield ''.join(pieces), True


def json_lines(path, errors='strict'):
    """(line number, object) for each non-blank line of a JSON lines file, read a line at a time."""
    offset = 0
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, 1):
            line = _decoded(path, raw, offset, errors)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path} line {number} is not JSON ({e.msg}); one JSON object per line")


def _jsonl_texts(path, column, errors):
    for number, record in json_lines(path, errors):
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            fail(f"{path} line {number} has no text under {column!r}; name the field with --text_column")
        yield record[column]


def _parquet_texts(path, column):
    import pyarrow.parquet
    try:
        table = pyarrow.parquet.ParquetFile(path)
    except Exception as e:
        fail(f"{path} is not a Parquet file ({type(e).__name__}); give .parquet files, JSON lines or text")
    if column not in table.schema_arrow.names:
        fail(f"{path} has no column {column!r} (it has {', '.join(table.schema_arrow.names)}); "
             f"name it with --text_column")
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[column]):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                fail(f"{path} row {row} has no text under {column!r} ({type(text).__name__})")
            yield text


def hf_records(name, split):
    """A Hugging Face dataset's records, streamed (read, not copied into a cache), or a one-line error."""
    import datasets
    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        fail(f"cannot load the Hugging Face dataset {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
             f"check its name and --hf_split, or download it first where there is a network")


def input_name(input):
    """What a prepared dataset is named after by default: the input's file or folder name, or the
    Hugging Face dataset's last part."""
    return os.path.splitext(os.path.basename(os.path.normpath(input[3:] if input.startswith('hf:') else input)))[0]


def _hf_texts(name, column, split):
    for number, record in enumerate(hf_records(name, split), 1):
        if not isinstance(record.get(column), str):
            fail(f"the Hugging Face dataset {name!r} has no text under {column!r} in record {number} "
                 f"(it has {', '.join(record)}); name the field with --text_column")
        yield record[column]


def documents(input, text_column='text', hf_split='train', val_fraction=0.1, seed=2357, utf8_errors='strict'):
    """The corpus's pieces (text, last, is_val), read afresh at each call. input is a text file (one
    document, whose end, from a line break on, is the validation split), a .jsonl or .parquet file
    (a document per record, its text under text_column), a folder of any of these (a .txt file is a
    document), or 'hf:NAME', a Hugging Face dataset (or a local folder that `datasets` reads).
    Documents go to validation by systematic sampling from a seeded start: exactly val_fraction of
    them, spread evenly through the corpus."""
    if input.startswith('hf:'):
        records = ((text, True) for text in _hf_texts(input[3:], text_column, hf_split))
    elif not os.path.isdir(input) and not input.endswith(('.jsonl', '.parquet')):
        done = 0  # the text before the cut is train's document, the rest validation's
        for text, last in _text_pieces(input, utf8_errors, math.ceil(os.path.getsize(input) * (1 - val_fraction))):
            yield text, last, done > 0
            done += last
        return
    else:
        records = _file_records(input, text_column, utf8_errors)
    start = random.Random(seed).random()
    index, started = 0, False
    for text, last in records:
        if not (text or started):
            continue  # an empty document: nothing to learn, not even where it ends
        yield text, last, math.floor((index + 1) * val_fraction + start) > math.floor(index * val_fraction + start)
        index, started = index + last, not last


def _file_records(input, text_column, utf8_errors):
    for path in source_files(input):
        if path.endswith('.jsonl'):
            yield from ((text, True) for text in _jsonl_texts(path, text_column, utf8_errors))
        elif path.endswith('.parquet'):
            yield from ((text, True) for text in _parquet_texts(path, text_column))
        else:
            yield from _text_pieces(path, utf8_errors)


def characters(pieces):
    """The sorted characters of a corpus, for a character-level vocabulary."""
    seen = set()
    for text, _, _ in pieces:
        seen.update(text)
    return sorted(seen)


def training_text(pieces, max_bytes=0):
    """The train split's text, for a tokenizer to learn from: all of it, or its first max_bytes."""
    left = max_bytes or float('inf')
    for text, _, is_val in pieces:
        if is_val:
            continue
        if left <= 0:
            return
        text = text if len(text) <= left else text[:int(left)]
        left -= len(text.encode('utf-8'))
        yield text


def make_encoder(tokenizer, spec):
    """text -> ids: 'char' (spec: stoi), 'gpt2' (tiktoken) or 'bpe' (spec: tokenizer.json's text)."""
    if tokenizer == 'char':
        return lambda texts: [[spec[c] for c in text] for text in texts]
    if tokenizer == 'gpt2':
        from nanogpt.data import gpt2_encoding
        enc = gpt2_encoding()
        return lambda texts: enc.encode_ordinary_batch(texts)
    from tokenizers import Tokenizer
    bpe = Tokenizer.from_str(spec)
    return lambda texts: [encoding.ids for encoding in bpe.encode_batch(texts)]


_encoder = None  # this process's, set by _start_encoder


def _start_encoder(tokenizer, spec, eot, dtype):
    global _encoder, _eot, _dtype
    _encoder, _eot, _dtype = make_encoder(tokenizer, spec), eot, dtype


def _encode_batch(batch):
    """A batch of pieces as the bytes of train's and validation's ids, with the text bytes and the
    documents ended in each."""
    ids, counts = ([], []), np.zeros((2, 2), dtype=np.int64)  # [train, val] x [text bytes, documents]
    for (text, last, is_val), piece_ids in zip(batch, _encoder([text for text, _, _ in batch])):
        ids[is_val].append(np.asarray(piece_ids + [_eot] if last else piece_ids, dtype=_dtype))
        counts[int(is_val)] += (len(text.encode('utf-8')), last)
    return [np.concatenate(part).tobytes() if part else b'' for part in ids], counts


def _batches(pieces):
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def write_dataset(pieces, out_dir, tokenizer, spec, eot, dtype, num_proc=1, total_bytes=None):
    """Encode the pieces into out_dir/train.bin and val.bin (written whole or not at all), with
    num_proc processes and at most two batches each in flight. Returns each split's tokens, text
    bytes and documents. Should sampling leave validation empty (a few documents), train's last
    document moves there."""
    from tqdm import tqdm
    dtype = np.dtype(dtype)
    paths = [os.path.join(out_dir, f'{split}.bin') for split in ('train', 'val')]
    os.makedirs(out_dir, exist_ok=True)
    files = [open(path + '.tmp', 'wb') for path in paths]
    counts, pool, pending = np.zeros((2, 2), dtype=np.int64), None, collections.deque()
    try:
        if num_proc > 1:
            # forked, not spawned: a spawned process would run the calling script again. Tokenizers
            # is told first that the children are single-threaded, so that none inherits its threads.
            os.environ['TOKENIZERS_PARALLELISM'] = 'false'
            pool = multiprocessing.get_context('fork').Pool(num_proc, _start_encoder, (tokenizer, spec, eot, dtype))
        else:
            _start_encoder(tokenizer, spec, eot, dtype)
        progress = tqdm(total=total_bytes, unit='B', unit_scale=True, desc='encoding', disable=None)

        def write_until(in_flight):
            nonlocal counts
            while len(pending) > in_flight:
                encoded, batch_counts = pending.popleft().get() if pool else pending.popleft()
                for f, chunk in zip(files, encoded):
                    f.write(chunk)
                counts += batch_counts
                progress.update(int(batch_counts[:, 0].sum()))
        for batch in _batches(pieces):
            pending.append(pool.apply_async(_encode_batch, (batch,)) if pool else _encode_batch(batch))
            write_until(2 * num_proc if pool else 0)
        write_until(0)
        progress.close()
        for f in files:
            f.close()
        if not counts[1, 1] and counts[0, 1]:
            counts = _move_last_document(paths[0] + '.tmp', paths[1] + '.tmp', eot, dtype, counts)
        for path in paths:
            os.replace(path + '.tmp', path)
    finally:
        if pool:
            pool.terminate()
        for f, path in zip(files, paths):
            f.close()
            if os.path.exists(path + '.tmp'):
                os.remove(path + '.tmp')
    tokens = [os.path.getsize(path) // dtype.itemsize for path in paths]
    return {'tokens': tokens, 'bytes': counts[:, 0].tolist(), 'documents': counts[:, 1].tolist()}


def _move_last_document(train_path, val_path, eot, dtype, counts):
    ids = np.fromfile(train_path, dtype=dtype)
    ends = np.flatnonzero(ids == eot)
    if len(ends) < 2:
        fail("validation got no text: the corpus is one document (or a text file with no line break in its "
             "last val_fraction); give more documents, or a text file with line breaks")
    start = ends[-2] + 1
    ids[start:].tofile(val_path)
    with open(train_path, 'r+b') as f:
        f.truncate(start * dtype.itemsize)
    moved = round(counts[0, 0] * (len(ids) - start) / len(ids))  # its text bytes, in proportion to its tokens
    return counts + np.array([[-moved, -1], [moved, 1]])
