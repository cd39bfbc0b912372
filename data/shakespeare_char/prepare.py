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
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from common import fail  # noqa: E402  (the repo root is on the path only from the line above)
from configurator import configure  # noqa: E402

input_file = ''  # the text to prepare; '' means input.txt beside this script, downloaded if missing
out_dir = ''  # where train.bin, val.bin and meta.pkl go; '' means beside this script
url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
configure(globals())

here = os.path.dirname(os.path.abspath(__file__))
out_dir = out_dir or here
if not input_file:
    input_file = os.path.join(here, 'input.txt')
    if not os.path.exists(input_file):
        import requests
        print(f"downloading {url}")
        try:
            response = requests.get(url, timeout=30)
            response.raise_for_status()
        except requests.RequestException as e:
            shared = os.path.join(here, '..', '..', '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
            copy_hint = f" (a copy is at {os.path.relpath(shared)})" if os.path.exists(shared) else ''
            fail(f"could not download {url} ({type(e).__name__}); download it yourself and save it "
                 f"as {os.path.relpath(input_file)}{copy_hint}")
        with open(input_file, 'w', encoding='utf-8') as f:
            f.write(response.text)
try:
    with open(input_file, encoding='utf-8') as f:
        text = f.read()
except (OSError, UnicodeDecodeError) as e:
    fail(f"cannot read {input_file} as UTF-8 text ({e})")
if len(text) < 2:
    fail(f"{input_file} is too short to split into train and val")
print(f"{input_file}: {len(text):,} characters")

chars = sorted(set(text))
if len(chars) > 65536:
    fail(f"{len(chars):,} distinct characters do not fit in uint16 token ids")
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
ids = np.array([stoi[c] for c in text], dtype=np.uint16)
split = int(len(ids) * 0.9)
print(f"vocab size: {len(chars)}: {''.join(chars)!r}")
print(f"train has {split:,} tokens, val has {len(ids) - split:,} tokens")

os.makedirs(out_dir, exist_ok=True)
ids[:split].tofile(os.path.join(out_dir, 'train.bin'))
ids[split:].tofile(os.path.join(out_dir, 'val.bin'))
with open(os.path.join(out_dir, 'meta.pkl'), 'wb') as f:
    pickle.dump({'vocab_size': len(chars), 'itos': itos, 'stoi': stoi}, f)
print(f"wrote train.bin, val.bin and meta.pkl to {out_dir}")
