"""
Prepare tiny Shakespeare with GPT-2's BPE tokenizer, for finetuning GPT-2 (config/finetune_shakespeare.py).

$ python data/shakespeare/prepare.py
$ python data/shakespeare/prepare.py --input_file=my_text.txt --out_dir=data/my_bpe

Uses input.txt beside this script, downloading it first if it is missing. The first 90% of the
text is train.bin, the rest val.bin: GPT-2 token ids as uint16, as in the original nanoGPT. There
is no meta.pkl: no meta means GPT-2 BPE to train.py and sample.py. tiktoken downloads the BPE files
once; offline, point TIKTOKEN_CACHE_DIR at a folder that holds its cached copies.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nanogpt import data, download, tokens  # noqa: E402  (the repo root is on the path only from the line above)
from configurator import configure  # noqa: E402

input_file = ''  # the text to prepare; '' means input.txt beside this script, downloaded if missing
out_dir = ''  # where train.bin and val.bin go; '' means beside this script
url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
configure(globals())

here = os.path.dirname(os.path.abspath(__file__))
out_dir = out_dir or here
text = download.read_text(input_file, os.path.join(here, 'input.txt'), url)
encoder = tokens.gpt2_encoding()
# the split is by characters, then each part is encoded on its own, as in the original
split = int(len(text) * 0.9)
train_ids, val_ids = encoder.encode_ordinary(text[:split]), encoder.encode_ordinary(text[split:])
data.write_bins(out_dir, train_ids, val_ids)
print(f"wrote train.bin and val.bin to {out_dir}")
