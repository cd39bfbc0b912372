"""
Prepare tiny Shakespeare for character-level language modelling.

$ python data/shakespeare_char/prepare.py
$ python data/shakespeare_char/prepare.py --input_file=my_text.txt --out_dir=data/my_chars

Uses input.txt beside this script, downloading it first if it is missing. Every distinct
character becomes a token: the first 90% of the text is train.bin, the rest val.bin (uint16
token ids, raw bytes), and meta.pkl holds vocab_size, itos and stoi, the same format as the
original nanoGPT, so either project reads the other's data.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nanogpt import data, download  # noqa: E402  (the repo root is on the path only from the line above)
from configurator import configure  # noqa: E402

input_file = ''  # the text to prepare; '' means input.txt beside this script, downloaded if missing
out_dir = ''  # where train.bin, val.bin and meta.pkl go; '' means beside this script
url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
configure(globals())

here = os.path.dirname(os.path.abspath(__file__))
out_dir = out_dir or here
text = download.read_text(input_file, os.path.join(here, 'input.txt'), url)
data.write_characters(text, out_dir)
print(f"wrote train.bin, val.bin and meta.pkl to {out_dir}")
