"""
How good a model is, in numbers that compare across runs, tokenizers and datasets: HellaSwag, and
held-out loss and bits per byte of a text. eval.py runs them on a checkpoint or GPT-2's weights,
train.py runs HellaSwag every hellaswag_interval iterations; both call the functions here.

HellaSwag (validation, 10,042 examples) is scored completion-style, as Karpathy's build-nanogpt
and llm.c do: for each of an example's 4 endings, the row is the context's tokens followed by
the tokens of " " + ending, and only the ending's tokens are scored. acc counts the examples whose
right ending has the lowest summed loss, acc_norm those whose right ending has the lowest mean
loss per token. A batch holds the 4 rows of batch_size examples, padded on the right and masked.
A context longer than block_size is cropped from the left. The text is tokenised as the model
reads: GPT-2's BPE, a byte-level BPE of its own (data/prepare.py), or its characters, where its
vocabulary holds every one of HellaSwag's (otherwise a one-line error says it cannot be scored).

Bits per byte: the summed loss of a text's tokens, each predicted from what precedes it, over
ln 2 and over the UTF-8 bytes those tokens spell. A byte is a byte whatever the tokenizer, so a
character-level model and a BPE one compare. Texts longer than block_size are read with a sliding
window that moves stride tokens at a time and scores only the tokens new in each window, so each
token is predicted from at least block_size - stride tokens of context (all of them, until the
text outgrows one window).
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from nanogpt import data, distributed, download, tokens
from nanogpt.report import fail

HELLASWAG_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
HELLASWAG_FILE = os.path.join('data', 'hellaswag', 'hellaswag_val.jsonl')  # relative to where the script runs

# OpenAI's GPT-2 on HellaSwag validation, scored as here (build-nanogpt, llm.c): (acc, acc_norm)
GPT2_HELLASWAG = {'gpt2': (0.2859, 0.2955), 'gpt2-xl': (0.3842, 0.4893)}

GPT2_VOCAB = 50257  # GPT-2 BPE's tokens; models trained here from scratch pad it to 50304


def runs_hellaswag(hellaswag, text_file, dataset):
    """Whether eval.py scores HellaSwag: hellaswag True, or 'auto' with neither a text_file nor a
    dataset to measure; a one-line error when nothing at all would be evaluated."""
    run = hellaswag is True or (hellaswag == 'auto' and not (text_file or dataset))
    if not (run or text_file or dataset):
        fail("nothing to evaluate: give --text_file=PATH or --dataset=NAME for loss and bits per byte, "
             "or --hellaswag=True")
    return run


def hellaswag_path(path, runtime):
    """The HellaSwag file: path as given, or data/hellaswag/hellaswag_val.jsonl, downloaded once by
    the first process of each machine while the others wait."""
    if path:
        return path
    if not os.path.exists(HELLASWAG_FILE) and runtime.local_rank == 0:
        download.download(HELLASWAG_URL, HELLASWAG_FILE,
                            f"download it yourself and save it as {HELLASWAG_FILE}, or pass --hellaswag_file=PATH")
    if runtime.ddp:
        torch.distributed.barrier()
    return HELLASWAG_FILE


def read_hellaswag(path):
    """The examples of a HellaSwag .jsonl file (one JSON object per line: ctx, endings, label, ...),
    or a one-line error for a missing or malformed file."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read the HellaSwag file {path} ({e.strerror if isinstance(e, OSError) else e}); "
             f"point --hellaswag_file at hellaswag_val.jsonl, or leave it empty to download it")
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
            ctx, endings, label = example['ctx'], example['endings'], example['label']
            valid = isinstance(ctx, str) and isinstance(endings, list) and len(endings) == 4 \
                and all(isinstance(e, str) for e in endings) and type(label) is int and 0 <= label < 4
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            fail(f"{path} line {number} is not a labelled HellaSwag example (a JSON object with ctx, "
                 f"4 endings and a label 0-3); use hellaswag_val.jsonl from the rowanz/hellaswag repository")
        examples.append(example)
    if not examples:
        fail(f"{path} holds no HellaSwag examples")
    return examples


@dataclass
class Example:
    index: int  # position in the file
    context: list  # token ids
    endings: list  # 4 lists of token ids
    label: int


def hellaswag_encoder(meta, texts):
    """text -> ids for HellaSwag in the model's own tokens: GPT-2 BPE, a byte-level BPE of ours (it
    spells any text), or a character vocabulary that holds every character of texts."""
    name = tokens.tokenizer_name(meta)
    if name == 'gpt2':  # checked by load_hellaswag before the file is read
        enc = tokens.gpt2_encoding()
        return lambda batch: enc.encode_ordinary_batch(batch), enc.eot_token
    if name == 'bpe':
        bpe = tokens.bpe_tokenizer(meta)
        return lambda batch: [e.ids for e in bpe.encode_batch(batch)], meta['eot']
    missing = sorted(set(''.join(texts)) - meta['stoi'].keys())
    if missing:
        fail(f"HellaSwag has characters this model's vocabulary lacks ({len(missing)} of them, e.g. "
             f"{''.join(missing[:10])!r}), so it cannot be scored; measure the model with --text_file=PATH or "
             f"--dataset=NAME (bits per byte)")
    stoi = meta['stoi']
    return lambda batch: [[stoi[c] for c in text] for text in batch], meta.get('eot', stoi.get('\n', 0))


def load_hellaswag(path, runtime, meta, vocab_size, limit=0):
    """HellaSwag's examples in the model's tokens (its meta: None for GPT-2 BPE), for hellaswag():
    from path, or the default file (downloaded once). limit keeps the first limit examples (0: all).
    A model of GPT-2's vocabulary is checked first, before any download."""
    if tokens.tokenizer_name(meta) == 'gpt2' and vocab_size < GPT2_VOCAB:
        fail(f"HellaSwag needs a model with GPT-2's BPE vocabulary ({GPT2_VOCAB} tokens); this one has {vocab_size}")
    raw = read_hellaswag(hellaswag_path(path, runtime))
    raw = raw[:limit] if limit else raw
    contexts, endings = [e['ctx'] for e in raw], [' ' + ending for e in raw for ending in e['endings']]
    encode, eot = hellaswag_encoder(meta, contexts + endings)
    contexts, endings = encode(contexts), encode(endings)
    # an empty context would leave the ending's first token nothing to be predicted from
    return [Example(i, contexts[i] or [eot], endings[4 * i:4 * i + 4], e['label']) for i, e in enumerate(raw)]


def hellaswag_rows(batch, block_size):
    """Inputs and targets (numpy, 4 rows per example) for model.token_losses: the targets are the
    ending's tokens and -1 elsewhere (context, padding). A row longer than block_size + 1 tokens
    loses its first tokens: the input is every token but the last, the targets every one but the first."""
    rows = []
    for example in batch:
        for ending in example.endings:
            row = (example.context + ending)[-(block_size + 1):]
            rows.append((row, min(len(ending), len(row) - 1)))
    width = max(len(row) for row, _ in rows) - 1
    idx = np.zeros((len(rows), width), dtype=np.int64)
    targets = np.full((len(rows), width), -1, dtype=np.int64)
    for r, (row, scored) in enumerate(rows):
        idx[r, :len(row) - 1] = row[:-1]
        targets[r, len(row) - 1 - scored:len(row) - 1] = row[-scored:]
    return idx, targets


def _my_batches(items, batch_size, runtime):
    """items in batches of batch_size; under DDP this rank's share, every world_size-th batch. The
    batches are the same for any number of processes, so the numbers are too."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return batches[runtime.rank::runtime.world_size]


def _progress(iterable, runtime, enabled, desc):
    if not (enabled and runtime.master and sys.stderr.isatty()):
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False)


@torch.no_grad()
def hellaswag(model, examples, runtime, batch_size=8, details=False, progress=False):
    """acc and acc_norm of model (a GPT, not a DDP or compiled wrapper) on examples from
    load_hellaswag. Under DDP every rank must call it: each scores its share of the batches and
    the counts are summed. Returns acc, acc_norm, correct, correct_norm, examples, seconds and,
    with details, one dict per example (its losses and choices) on every rank."""
    start = time.time()
    block_size = model.config.block_size
    # similar lengths in a batch: less padding. Sorted once per call, so DDP ranks agree on the batches
    order = sorted(examples, key=lambda e: max(len(e.context) + len(end) for end in e.endings))
    counts = torch.zeros(2, dtype=torch.int64, device=runtime.device)  # correct, correct_norm
    mine = []
    was_training = model.training
    model.eval()
    for batch in _progress(_my_batches(order, batch_size, runtime), runtime, progress, 'hellaswag'):
        idx, targets = hellaswag_rows(batch, block_size)
        idx, targets = data.to_device(idx, runtime), data.to_device(targets, runtime)
        with runtime.autocast:
            losses = model.token_losses(idx, targets)
        sums = losses.sum(1).view(-1, 4)
        means = sums / (targets != -1).sum(1).view(-1, 4)
        labels = torch.tensor([e.label for e in batch], device=runtime.device)
        pred, pred_norm = sums.argmin(1), means.argmin(1)  # ties go to the first ending
        counts += torch.stack([(pred == labels).sum(), (pred_norm == labels).sum()])
        if details:
            mine += [dict(index=e.index, label=e.label, pred=p, pred_norm=pn, sum_losses=s, mean_losses=m,
                          ending_tokens=[len(end) for end in e.endings])
                     for e, p, pn, s, m in zip(batch, pred.tolist(), pred_norm.tolist(), sums.tolist(), means.tolist())]
    model.train(was_training)
    if runtime.ddp:
        torch.distributed.all_reduce(counts)
    n, (correct, correct_norm) = len(examples), counts.tolist()  # the ranks' shares make up every example
    result = dict(acc=correct / max(n, 1), acc_norm=correct_norm / max(n, 1), correct=correct,
                  correct_norm=correct_norm, examples=n, seconds=time.time() - start)
    if details:
        result['details'] = sorted((d for part in distributed.gather_from_ranks(mine, runtime) for d in part),
                                   key=lambda d: d['index'])
    return result


def token_bytes(meta, vocab_size):
    """The UTF-8 bytes each token id spells (numpy, vocab_size entries): from GPT-2 BPE, or a
    character vocabulary. <|endoftext|> (a document boundary, not text) and unused ids count 0."""
    table = np.zeros(vocab_size, dtype=np.int64)
    if meta is None:
        enc = tokens.gpt2_encoding()
        for i in range(min(enc.n_vocab, vocab_size)):
            if i != enc.eot_token:
                table[i] = len(enc.decode_single_token_bytes(i))
    elif tokens.tokenizer_name(meta) == 'bpe':
        # a byte-level BPE spells each byte as one character: a token's length is its bytes; its
        # special tokens (end-of-text, the chat tokens) spell none
        bpe = tokens.bpe_tokenizer(meta)
        special = bpe.get_added_tokens_decoder()
        for i in range(min(bpe.get_vocab_size(), vocab_size)):
            if i not in special:
                table[i] = len(bpe.id_to_token(i))
    else:
        for i, char in meta['itos'].items():
            if i < vocab_size:
                table[i] = len(char.encode('utf-8'))
    return table


def text_tokens(path, meta, max_tokens=0):
    """A UTF-8 text file's token ids (numpy), as the model reads it: GPT-2 BPE after an <|endoftext|>,
    so that the first token is predicted too; or the model's characters, where the first one only
    gives context. max_tokens keeps the first max_tokens (0: all)."""
    text = download.read_text(path)
    if tokens.tokenizer_name(meta) in ('gpt2', 'bpe'):
        if meta is None:
            ids, eot = tokens.gpt2_encoding().encode_ordinary(text), tokens.GPT2_EOT
        else:
            ids, eot = tokens.bpe_tokenizer(meta).encode(text).ids, meta['eot']
        ids = [eot] + (ids[:max_tokens] if max_tokens else ids)
    else:
        unknown = sorted(set(text) - meta['stoi'].keys())
        if unknown:
            fail(f"{path} has characters this model's vocabulary lacks: {''.join(unknown)[:40]!r}")
        ids = [meta['stoi'][c] for c in (text[:max_tokens] if max_tokens else text)]
    if len(ids) < 2:
        fail(f"{path} is too short to measure: it needs at least one token after the first")
    return np.array(ids, dtype=np.int64)


def val_tokens(dataset, meta, vocab_size, max_tokens=0):
    """The token ids of data/<dataset>/val.bin (the first max_tokens; 0: all), after an <|endoftext|>
    for a BPE model (each document there ends with one, so the first one gets the same start as
    the rest). The dataset must be tokenised the way the model is."""
    data_dir = os.path.join('data', dataset)
    path = data.dataset_paths(data_dir)['val']
    dataset_meta = data.read_meta(os.path.join(data_dir, 'meta.pkl'))
    dtype = data.token_dtype(dataset_meta)
    if not os.path.exists(path) or os.path.getsize(path) % dtype.itemsize:
        fail(f"{path} is missing or not {dtype} token ids; prepare the dataset first (data/{dataset}/prepare.py)")
    if not tokens.same_tokenizer(dataset_meta, meta):
        there = {'gpt2': 'GPT-2 BPE', 'char': 'a character vocabulary', 'bpe': 'a BPE of its own'}
        fail(f"{data_dir} is tokenised differently from the model ({there[tokens.tokenizer_name(dataset_meta)]} "
             f"there); use the dataset it was trained on, or --text_file")
    stored = np.memmap(path, dtype=dtype, mode='r')
    ids = np.asarray(stored[:max_tokens] if max_tokens else stored).astype(np.int64)
    if ids.size and ids.max() >= vocab_size:
        fail(f"{path} has token ids >= the model's vocab_size ({vocab_size}); it was prepared for another model")
    if meta is None or tokens.tokenizer_name(meta) == 'bpe':
        ids = np.concatenate([[tokens.gpt2_encoding().eot_token if meta is None else meta['eot']], ids])
    if len(ids) < 2:
        fail(f"{path} is too short to measure")
    return ids


def sliding_windows(n_tokens, block_size, stride):
    """(begin, end, scored_from) for each window over n_tokens tokens: the window reads tokens
    [begin, end) and predicts tokens begin + 1 .. end, of which those after scored_from are new
    (scored here, and in no other window). Every token but the first is scored exactly once."""
    windows, scored_to, begin = [], 0, 0
    while scored_to < n_tokens - 1:
        end = min(begin + block_size, n_tokens - 1)
        windows.append((begin, end, scored_to))
        scored_to, begin = end, begin + stride
    return windows


@torch.no_grad()
def text_loss(model, tokens, bytes_per_token, runtime, stride=0, batch_size=8, progress=False):
    """Mean loss per token (nats) and bits per byte of tokens[1:], each predicted from the tokens
    before it through a sliding window of block_size tokens that moves stride tokens at a time
    (0: block_size // 2). bytes_per_token is token_bytes(). Under DDP every rank must call it with
    the same tokens: each reads its share of the windows and the sums are added up."""
    start = time.time()
    block_size = model.config.block_size
    stride = stride or max(1, block_size // 2)
    if not 1 <= stride <= block_size:
        fail(f"--stride must be between 1 and the model's block_size ({block_size}), not {stride}")
    sums = torch.zeros((), dtype=torch.float32 if runtime.device_type == 'mps' else torch.float64,
                       device=runtime.device)
    was_training = model.training
    model.eval()
    for batch in _progress(_my_batches(sliding_windows(len(tokens), block_size, stride), batch_size, runtime),
                           runtime, progress, 'windows'):
        width = max(end - begin for begin, end, _ in batch)
        idx = np.zeros((len(batch), width), dtype=np.int64)
        targets = np.full((len(batch), width), -1, dtype=np.int64)
        for r, (begin, end, scored_from) in enumerate(batch):
            idx[r, :end - begin] = tokens[begin:end]
            targets[r, scored_from - begin:end - begin] = tokens[scored_from + 1:end + 1]
        with runtime.autocast:
            losses = model.token_losses(data.to_device(idx, runtime), data.to_device(targets, runtime))
        sums += losses.sum()
    model.train(was_training)
    if runtime.ddp:
        torch.distributed.all_reduce(sums)
    # the windows score every token but the first exactly once, over all ranks together
    loss_sum, n_scored, n_bytes = sums.item(), len(tokens) - 1, int(bytes_per_token[tokens[1:]].sum())
    return dict(loss=loss_sum / n_scored, bpb=loss_sum / math.log(2) / n_bytes if n_bytes else float('nan'),
                tokens=n_scored, bytes=n_bytes, stride=stride, seconds=time.time() - start)
