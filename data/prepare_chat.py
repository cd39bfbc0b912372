"""
Conversations into a chat finetuning dataset: train.bin / val.bin (the rendered tokens) and beside
them train_mask.bin / val_mask.bin (uint8, 1 where the token is the assistant's: what train.py
learns). nanogpt/chat.py says how turns are rendered.

$ python data/prepare_chat.py --input=chats.jsonl --tokenizer=gpt2 --out_dir=data/chat
$ python data/prepare_chat.py --input=chats.jsonl --tokenizer=out-mine --out_dir=data/chat-mine
$ python train.py config/finetune_chat.py --init_from=out-mine --dataset=chat-mine --out_dir=out-chat

--input is JSON lines, one conversation per line: {"messages": [{"role": "system"|"user"|"assistant",
"content": "..."}, ...]}, or hf:NAME, a Hugging Face dataset with a "messages" column (--hf_split).
--tokenizer is the finetuned model's: 'gpt2', or the folder of the data it was trained on (its
meta.pkl) or its out_dir (the checkpoint's tokenizer). Validation holds whole conversations.
"""
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import chat, corpus, data  # noqa: E402  (the repo root is on the path only from the line above)
from nanogpt.report import fail  # noqa: E402
from configurator import configure  # noqa: E402

input = ''  # a .jsonl file of conversations, or hf:NAME
hf_split = 'train'  # hf:NAME: the split to read
tokenizer = 'gpt2'  # 'gpt2', or a dataset folder / out_dir whose tokenizer the model has
learn = 'assistant'  # which tokens train.py learns: the assistant's, or 'all' (every token, for comparison)
val_fraction = 0.1  # the share of conversations held out for validation
out_dir = ''  # '': data/<the input's name>
seed = 2357  # which conversations go to validation
configure(globals())

if learn not in ('assistant', 'all'):
    fail(f"learn must be 'assistant' or 'all', not {learn!r}")
if not 0 < val_fraction < 1:
    fail(f"val_fraction must be between 0 and 1, not {val_fraction}")
if input.startswith('hf:'):
    conversations = [chat.check_conversation(r, f"{input[3:]} record {i}")
                     for i, r in enumerate(corpus.hf_records(input[3:], hf_split), 1)]
elif input and os.path.isfile(input):
    conversations = chat.read_conversations(input)
else:
    fail(f"input {input!r} is not a file; give --input=conversations.jsonl or hf:NAME")
if len(conversations) < 2:
    fail(f"{input} holds {len(conversations)} conversation; validation needs one more")
meta, vocab_size = chat.tokenizer_of(tokenizer)
tok = chat.ChatTokenizer(meta, vocab_size)
out_dir = out_dir or os.path.join('data', corpus.input_name(input) + '-chat')

order = list(range(len(conversations)))
random.Random(seed).shuffle(order)
n_val = max(1, round(len(conversations) * val_fraction))
splits = {'val': sorted(order[:n_val]), 'train': sorted(order[n_val:])}
dtype = data.token_dtype(meta)
os.makedirs(out_dir, exist_ok=True)
for split, indices in splits.items():
    rendered = [chat.render(conversations[i], tok) for i in indices]
    ids = np.array([i for r in rendered for i in r[0]], dtype=dtype)
    mask = np.array([m for r in rendered for m in r[1]], dtype=np.uint8)
    mask = mask if learn == 'assistant' else np.ones_like(mask)
    ids.tofile(os.path.join(out_dir, f'{split}.bin'))
    mask.tofile(os.path.join(out_dir, f'{split}_mask.bin'))
    print(f"{split}: {len(indices):,} conversations, {len(ids):,} tokens, {int(mask.sum()):,} of them the assistant's")
if meta is not None:
    data.write_meta(out_dir, meta)
elif os.path.exists(os.path.join(out_dir, 'meta.pkl')):
    os.remove(os.path.join(out_dir, 'meta.pkl'))  # GPT-2 BPE has none
print(f"finetune with: python train.py config/finetune_chat.py --dataset={data.dataset_setting(out_dir)} ...")
