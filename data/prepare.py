"""
Any corpus into train.bin / val.bin (and meta.pkl) for train.py, with the tokenizer of your choice:
its characters, GPT-2's BPE, or a byte-level BPE trained on the corpus itself.

$ python data/prepare.py --input=corpus.txt --tokenizer=bpe --vocab_size=4096 --out_dir=data/mine
$ python train.py config/train_shakespeare_char_cpu.py --dataset=mine --out_dir=out-mine
$ python sample.py --out_dir=out-mine

--input is a UTF-8 text file (one document, whose end is held out for validation), a JSON lines
(.jsonl) or Parquet file (a document per record, its text under --text_column), a folder of such
files (a .txt file is a document), or hf:NAME, a Hugging Face dataset (its --hf_split). Documents
end with an end-of-text token; validation holds whole documents. A BPE tokenizer is written beside
the data as tokenizer.json and kept in meta.pkl, which every checkpoint trained on the data
carries: sample.py and eval.py need only the checkpoint. Vocabularies above 65,536 tokens are
stored as uint32 ids (meta.pkl says so), smaller ones as uint16, the original's format.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import corpus, data  # noqa: E402  (the repo root is on the path only from the line above)
from nanogpt.report import fail  # noqa: E402
from configurator import configure  # noqa: E402

input = ''  # a text file, .jsonl or .parquet file, a folder of them, or hf:NAME (a Hugging Face dataset)
text_column = 'text'  # JSON lines, Parquet, Hugging Face: the field that holds a document's text
hf_split = 'train'  # hf:NAME: the split to read
tokenizer = 'bpe'  # 'char' (the corpus's characters), 'gpt2' (tiktoken) or 'bpe' (trained on the corpus)
vocab_size = 4096  # bpe: tokens in all, the 256 bytes, <|endoftext|> and the chat tokens included
tokenizer_bytes = 0  # bpe: train on the first this many bytes of the corpus (0: all of it)
val_fraction = 0.1  # the share of documents held out for validation
utf8_errors = 'strict'  # bytes that are not UTF-8: 'strict' stops with where they are, 'replace' reads U+FFFD
num_proc = 0  # processes that encode (0: one per core, for corpora over 16 MB)
out_dir = ''  # '': data/<the input's name>
seed = 2357  # which documents go to validation
configure(globals())

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
out_dir = out_dir or os.path.join('data', corpus.input_name(input))
pieces = lambda: corpus.documents(input, text_column, hf_split, val_fraction, seed, utf8_errors)
file_bytes = None if hf_name else sum(os.path.getsize(path) for path in corpus.source_files(input))
if not any(text for text, _, _ in pieces()):
    fail(f"{input} holds no text")
existing = data.read_meta(os.path.join(out_dir, 'meta.pkl')) if os.path.exists(os.path.join(out_dir, 'train.bin')) \
    else False


def refuse_other_tokenizer(meta):
    """Re-preparing a folder with another tokenizer would leave its checkpoints reading wrong ids."""
    if existing is not False and not data.same_tokenizer(existing, meta):
        fail(f"{out_dir} already holds a dataset with another tokenizer ({data.tokenizer_name(existing)}); "
             f"delete it first, or prepare into another --out_dir")


# the tokenizer: meta.pkl's contents (None for GPT-2 BPE, as data/shakespeare/prepare.py writes)
if existing is not False and data.tokenizer_name(existing) != tokenizer:
    refuse_other_tokenizer({'tokenizer': tokenizer})
if tokenizer == 'char':
    chars = corpus.characters(pieces())
    meta = {'vocab_size': len(chars) + 1, 'itos': dict(enumerate(chars)), 'stoi': {c: i for i, c in enumerate(chars)},
            'eot': len(chars), 'tokenizer': 'char'}
    meta['itos'][meta['eot']] = ''  # a document boundary reads as nothing
    spec, eot = meta['stoi'], meta['eot']
elif tokenizer == 'gpt2':
    meta, spec, eot = None, None, data.GPT2_EOT
    data.gpt2_encoding()  # fail now, not in the encoding processes, if it cannot be had
else:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    started = time.time()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split into words first
    bpe.decoder = decoders.ByteLevel()
    # end-of-text first (id 0), then the chat tokens that chat finetuning renders turns with (nanogpt/chat.py)
    special = [data.EOT_TOKEN, *data.CHAT_TOKENS.values()]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus.training_text(pieces(), tokenizer_bytes), trainer)
    seconds = time.time() - started
    spec, eot = bpe.to_str(), bpe.token_to_id(data.EOT_TOKEN)
    meta = {'vocab_size': bpe.get_vocab_size(), 'tokenizer': 'bpe', 'tokenizer_json': spec, 'eot': eot}
    print(f"trained a byte-level BPE of {meta['vocab_size']:,} tokens in {seconds:.1f} s")
if meta is not None and meta['vocab_size'] > 2 ** 16:
    meta['dtype'] = 'uint32'  # ids past uint16; the original's readers take uint16 only
refuse_other_tokenizer(meta)

# every document's ids, then end-of-text, into train.bin and val.bin
workers = num_proc or (os.cpu_count() if file_bytes is None or file_bytes > corpus.PARALLEL_BYTES else 1)
started = time.time()
written = corpus.write_dataset(pieces(), out_dir, tokenizer, spec, eot, data.token_dtype(meta), workers, file_bytes)
if tokenizer == 'bpe':
    bpe.save(os.path.join(out_dir, 'tokenizer.json'))
if meta is not None:
    data.write_meta(out_dir, meta)
seconds = time.time() - started
(train_tokens, val_tokens), (train_bytes, val_bytes) = written['tokens'], written['bytes']
print(f"{sum(written['documents']):,} documents, {written['documents'][1]:,} for validation; encoded "
      f"{(train_bytes + val_bytes) / 1e6:.1f} MB in {seconds:.1f} s with {workers} process{'es' if workers > 1 else ''}")
print(f"train has {train_tokens:,} tokens, val has {val_tokens:,} tokens ({data.token_dtype(meta)}), "
      f"{train_bytes / max(train_tokens, 1):.2f} bytes per token; train with: python train.py "
      f"--dataset={data.dataset_setting(out_dir)} ...")
