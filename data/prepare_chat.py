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
import sys

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
conversations = chat.read_input(input, hf_split)
if len(conversations) < 2:
    fail(f"{input} holds {len(conversations)} conversation; validation needs one more")
meta, vocab_size = chat.tokenizer_of(tokenizer)
tok = chat.ChatTokenizer(meta, vocab_size)
out_dir = out_dir or os.path.join('data', corpus.input_name(input) + '-chat')

chat.write_dataset(conversations, tok, meta, out_dir, learn, val_fraction, seed)
print(f"finetune with: python train.py config/finetune_chat.py --dataset={data.dataset_setting(out_dir)} ...")
