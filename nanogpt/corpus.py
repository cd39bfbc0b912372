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
import time

import numpy as np

from nanogpt import data, tokens
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
        enc = tokens.gpt2_encoding()
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
    split_tokens = [os.path.getsize(path) // dtype.itemsize for path in paths]
    return {'tokens': split_tokens, 'bytes': counts[:, 0].tolist(), 'documents': counts[:, 1].tolist()}


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


def make_tokenizer(tokenizer, pieces, vocab_size=4096, tokenizer_bytes=0):
    """A corpus's tokenizer, from pieces() (a fresh iterator of its documents each call), as
    (meta.pkl's contents: None for GPT-2 BPE, as data/shakespeare/prepare.py writes; the spec
    make_encoder takes; the end-of-text id; the trained BPE, or None)."""
    bpe = None
    if tokenizer == 'char':
        chars = characters(pieces())
        meta = {'vocab_size': len(chars) + 1, 'itos': dict(enumerate(chars)),
                'stoi': {c: i for i, c in enumerate(chars)}, 'eot': len(chars), 'tokenizer': 'char'}
        meta['itos'][meta['eot']] = ''  # a document boundary reads as nothing
        spec, eot = meta['stoi'], meta['eot']
    elif tokenizer == 'gpt2':
        meta, spec, eot = None, None, tokens.GPT2_EOT
        tokens.gpt2_encoding()  # fail now, not in the encoding processes, if it cannot be had
    else:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        started = time.time()
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split into words first
        bpe.decoder = decoders.ByteLevel()
        # end-of-text first (id 0), then the chat tokens that chat finetuning renders turns with (nanogpt/chat.py)
        special = [tokens.EOT_TOKEN, *tokens.CHAT_TOKENS.values()]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(training_text(pieces(), tokenizer_bytes), trainer)
        seconds = time.time() - started
        spec, eot = bpe.to_str(), bpe.token_to_id(tokens.EOT_TOKEN)
        meta = {'vocab_size': bpe.get_vocab_size(), 'tokenizer': 'bpe', 'tokenizer_json': spec, 'eot': eot}
        print(f"trained a byte-level BPE of {meta['vocab_size']:,} tokens in {seconds:.1f} s")
    return meta, spec, eot, bpe


def prepare(input, out_dir='', tokenizer='bpe', vocab_size=4096, text_column='text', hf_split='train',
            tokenizer_bytes=0, val_fraction=0.1, utf8_errors='strict', num_proc=0, seed=2357):
    """data/prepare.py's work, its settings as arguments: the corpus input (documents() says what it
    may be) into out_dir ('': data/<input_name(input)>) as train.bin, val.bin and, but for GPT-2 BPE,
    meta.pkl (with tokenizer='bpe', tokenizer.json too), saying what it did on stdout. num_proc 0 is
    one process per core for corpora over PARALLEL_BYTES. Returns out_dir."""
    if tokenizer not in ('char', 'gpt2', 'bpe'):
        fail(f"tokenizer must be 'char', 'gpt2' or 'bpe', not {tokenizer!r}")
    if not 0 < val_fraction < 1:
        fail(f"val_fraction must be between 0 and 1, not {val_fraction}")
    if utf8_errors not in ('strict', 'replace'):
        fail(f"utf8_errors must be 'strict' or 'replace', not {utf8_errors!r}")
    if tokenizer == 'bpe' and not 261 <= vocab_size <= 2 ** 32:
        fail(f"vocab_size {vocab_size} cannot be: a byte-level BPE needs at least 261 tokens (256 bytes, "
             f"<|endoftext|> and 4 chat tokens), and uint32 token ids allow at most 4294967296")
    hf_name = input[3:] if input.startswith('hf:') else None
    if not input or not (hf_name or os.path.exists(input)):
        fail(f"input {input!r} does not exist; give --input=a text, .jsonl or .parquet file, a folder of them, "
             f"or hf:NAME")
    out_dir = out_dir or os.path.join('data', input_name(input))
    pieces = lambda: documents(input, text_column, hf_split, val_fraction, seed, utf8_errors)
    file_bytes = None if hf_name else sum(os.path.getsize(path) for path in source_files(input))
    if not any(text for text, _, _ in pieces()):
        fail(f"{input} holds no text")
    existing = data.read_meta(os.path.join(out_dir, 'meta.pkl')) if os.path.exists(os.path.join(out_dir, 'train.bin')) \
        else False

    def refuse_other_tokenizer(meta):
        """Re-preparing a folder with another tokenizer would leave its checkpoints reading wrong ids."""
        if existing is not False and not tokens.same_tokenizer(existing, meta):
            fail(f"{out_dir} already holds a dataset with another tokenizer ({tokens.tokenizer_name(existing)}); "
                 f"delete it first, or prepare into another --out_dir")

    if existing is not False and tokens.tokenizer_name(existing) != tokenizer:
        refuse_other_tokenizer({'tokenizer': tokenizer})
    meta, spec, eot, bpe = make_tokenizer(tokenizer, pieces, vocab_size, tokenizer_bytes)
    if meta is not None and meta['vocab_size'] > 2 ** 16:
        meta['dtype'] = 'uint32'  # ids past uint16; the original's readers take uint16 only
    refuse_other_tokenizer(meta)

    # every document's ids, then end-of-text, into train.bin and val.bin
    workers = num_proc or (os.cpu_count() if file_bytes is None or file_bytes > PARALLEL_BYTES else 1)
    started = time.time()
    written = write_dataset(pieces(), out_dir, tokenizer, spec, eot, data.token_dtype(meta), workers, file_bytes)
    if tokenizer == 'bpe':
        bpe.save(os.path.join(out_dir, 'tokenizer.json'))
    if meta is not None:
        data.write_meta(out_dir, meta)
    seconds = time.time() - started
    (train_tokens, val_tokens), (train_bytes, val_bytes) = written['tokens'], written['bytes']
    print(f"{sum(written['documents']):,} documents, {written['documents'][1]:,} for validation; encoded "
          f"{(train_bytes + val_bytes) / 1e6:.1f} MB in {seconds:.1f} s with {workers} "
          f"process{'es' if workers > 1 else ''}")
    print(f"train has {train_tokens:,} tokens, val has {val_tokens:,} tokens ({data.token_dtype(meta)}), "
          f"{train_bytes / max(train_tokens, 1):.2f} bytes per token; train with: python train.py "
          f"--dataset={data.dataset_setting(out_dir)} ...")
    return out_dir
