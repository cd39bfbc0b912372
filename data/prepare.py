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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import corpus  # noqa: E402  (the repo root is on the path only from the line above)
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

corpus.prepare(input, out_dir, tokenizer, vocab_size, text_column, hf_split, tokenizer_bytes, val_fraction,
               utf8_errors, num_proc, seed)
