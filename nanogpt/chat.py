"""
Conversations as tokens, for chat finetuning (data/prepare_chat.py, train.py), and a model's
replies for sample.py --chat.

A conversation is a list of messages {'role': 'system'|'user'|'assistant', 'content': text}. It
is rendered with special tokens: each message is its role's token, its content's tokens and
<|end|>; the conversation ends with <|endoftext|>. The mask marks the tokens the model learns to
say: an assistant message's content and its <|end|>, nothing else (not the role token, which the
prompt supplies). With GPT-2's BPE the chat tokens take ids 50257-50260 of the padded vocabulary
(50304 rows, trained from scratch); a BPE of ours (data/prepare.py) has them as special tokens.
"""
import os
import random
import sys

import numpy as np

from nanogpt import corpus, data, tokens
from nanogpt.report import TextStream, fail

ROLES = ('system', 'user', 'assistant')
SPECIAL, EOT, GPT2_CHAT_IDS = tokens.CHAT_TOKENS, tokens.EOT_TOKEN, tokens.GPT2_CHAT_IDS


class ChatTokenizer:
    """A model's tokenizer with its chat tokens: encode(content) -> ids, decode(ids) -> text, and
    ids[name] for 'system', 'user', 'assistant', 'end' and 'eot'."""

    def __init__(self, meta, vocab_size):
        name = tokens.tokenizer_name(meta)
        if name == 'gpt2':
            if vocab_size <= max(GPT2_CHAT_IDS.values()):
                fail(f"chat needs GPT-2's padded vocabulary (50304 tokens) for its chat tokens; this model has "
                     f"{vocab_size}: train from scratch, or from a model with the padded vocabulary")
            enc = tokens.gpt2_encoding()
            self.ids = {**GPT2_CHAT_IDS, 'eot': tokens.GPT2_EOT}
            self._encode = enc.encode_ordinary  # special strings in content stay text
            names = {i: SPECIAL[n] for n, i in GPT2_CHAT_IDS.items()}
            self._decode = lambda ids: ''.join(names[i] if i in names else enc.decode([i]) for i in ids) \
                if any(i in names for i in ids) else enc.decode(ids)
        elif name == 'bpe':
            bpe = tokens.bpe_tokenizer(meta)
            self.ids = {n: bpe.token_to_id(token) for n, token in {**SPECIAL, 'eot': EOT}.items()}
            if None in self.ids.values():
                fail("this model's BPE has no chat tokens (<|user|>, <|assistant|>, ...): prepare its pretraining "
                     "data again with data/prepare.py, whose BPEs reserve them, and train on that")
            self._encode = lambda text: bpe.encode(text).ids
            self._decode = lambda ids: bpe.decode(ids, skip_special_tokens=False)
        else:
            fail("a character-level model has no chat tokens; chat needs GPT-2's BPE or a BPE of data/prepare.py")
        self.role_of = {self.ids[role]: role for role in ROLES}

    def encode(self, text):
        return self._encode(text)

    def decode(self, ids):
        return self._decode(ids)


def tokenizer_of(source):
    """The tokenizer a chat dataset is written in: 'gpt2', a dataset folder with a meta.pkl of
    data/prepare.py, or an out_dir whose checkpoint records one. Returns (meta, vocab_size)."""
    if source == 'gpt2':
        return None, 50304
    meta_path, ckpt_path = os.path.join(source, 'meta.pkl'), os.path.join(source, 'ckpt.pt')
    if os.path.exists(meta_path):
        meta = data.read_meta(meta_path)
    elif os.path.exists(ckpt_path):
        import torch
        meta = torch.load(ckpt_path, map_location='cpu', mmap=True, weights_only=False).get('meta')
    else:
        fail(f"--tokenizer={source} is neither 'gpt2' nor a folder with meta.pkl or ckpt.pt; name the data or "
             f"the out_dir of the model you will finetune")
    return meta, (meta or {}).get('vocab_size', 50304)


def special_in(text):
    """The first chat token spelled out in text, or None. Message text may not hold one: a user could
    otherwise end a turn or forge one, so such text is refused rather than escaped."""
    return next((token for token in (*SPECIAL.values(), EOT) if token in text), None)


def check_content(text, where):
    if token := special_in(text):
        fail(f"{where} contains the special token {token}, which would end or forge a turn; remove it from the text")


def check_conversation(record, where):
    """A conversation's messages, or a one-line error that says what is wrong with it."""
    messages = record.get('messages') if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        fail(f"{where} has no \"messages\" list; write {{\"messages\": [{{\"role\": \"user\", \"content\": ...}}, ...]}}")
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or not isinstance(message.get('content'), str) or 'role' not in message:
            fail(f"{where} message {number} needs a role and a content (text)")
        if message['role'] not in ROLES:
            fail(f"{where} message {number} has the unknown role {message['role']!r}; use system, user or assistant")
        check_content(message['content'], f"{where} message {number}")
    if not any(m['role'] == 'assistant' for m in messages):
        fail(f"{where} has no assistant message, so nothing to learn; give each conversation an answer")
    return [{'role': m['role'], 'content': m['content']} for m in messages]


def read_conversations(path):
    """The conversations of a JSON lines file, checked; blank lines are skipped."""
    if not os.path.isfile(path):
        fail(f"{path} is not a file; give --input=conversations.jsonl or hf:NAME")
    conversations = [check_conversation(record, f"{path} line {number}") for number, record in corpus.json_lines(path)]
    if not conversations:
        fail(f"{path} holds no conversations")
    return conversations


def read_input(input, hf_split='train'):
    """The conversations of data/prepare_chat.py's --input: a JSON lines file, or hf:NAME, the
    hf_split of a Hugging Face dataset with a "messages" column; checked."""
    if input.startswith('hf:'):
        return [check_conversation(record, f"{input[3:]} record {number}")
                for number, record in enumerate(corpus.hf_records(input[3:], hf_split), 1)]
    if input and os.path.isfile(input):
        return read_conversations(input)
    fail(f"input {input!r} is not a file; give --input=conversations.jsonl or hf:NAME")


def write_dataset(conversations, tok, meta, out_dir, learn='assistant', val_fraction=0.1, seed=2357):
    """train.bin / val.bin and their masks in out_dir, and the tokenizer's meta.pkl (GPT-2 BPE has
    none): the conversations rendered, a seeded val_fraction of them (one at least) held out whole.
    learn='all' masks every token in, for comparison."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(conversations) * val_fraction))
    splits = {'val': sorted(order[:n_val]), 'train': sorted(order[n_val:])}
    dtype = data.token_dtype(meta)
    os.makedirs(out_dir, exist_ok=True)
    for split, indices in splits.items():
        rendered = [render(conversations[i], tok) for i in indices]
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


def render(messages, tok, end_conversation=True):
    """(ids, mask): the conversation's tokens, and 1 where the model is to learn the token."""
    ids, mask = [], []
    for message in messages:
        content = tok.encode(message['content'])
        learned = int(message['role'] == 'assistant')
        ids += [tok.ids[message['role']], *content, tok.ids['end']]
        mask += [0] + [learned] * (len(content) + 1)
    if end_conversation:
        ids.append(tok.ids['eot'])
        mask.append(0)
    return ids, mask


def parse(ids, tok):
    """The messages that rendered ids (render's inverse), up to the end of the conversation."""
    messages, role, content = [], None, []
    for i in ids:
        if i == tok.ids['eot']:
            break
        if i in tok.role_of:
            role, content = tok.role_of[i], []
        elif i == tok.ids['end'] and role is not None:
            messages.append({'role': role, 'content': tok.decode(content)})
            role = None
        elif role is not None:
            content.append(i)
    return messages


def prompt(messages, tok, context):
    """The tokens that ask for the assistant's next message: the system message (kept), then as many
    of the latest turns as fit with the assistant's token in context tokens, oldest dropped first.
    Returns (ids, how many messages were dropped)."""
    system = [m for m in messages[:1] if m['role'] == 'system']
    turns = messages[len(system):]
    head = render(system, tok, end_conversation=False)[0]
    rendered = [render([m], tok, end_conversation=False)[0] for m in turns]
    kept = len(rendered)
    while kept and len(head) + sum(map(len, rendered[len(rendered) - kept:])) + 1 > context:
        kept -= 1
    ids = head + [i for r in rendered[len(rendered) - kept:] for i in r] + [tok.ids['assistant']]
    if len(ids) > context or (turns and not kept):
        fail(f"the system message and the last message do not fit in the model's context ({context} tokens); "
             f"shorten them")
    return ids, len(turns) - kept


def reply(model, tok, messages, max_new_tokens, runtime, **sampling):
    """The assistant's next message (model.generate's sampling settings), printed as it is written,
    until <|end|> or max_new_tokens. The history leaves the reply min(max_new_tokens, block_size // 2)
    tokens of the context; a line on stderr says when that drops the oldest messages."""
    import torch  # here, not above: data/prepare_chat.py needs this module but not torch
    room = min(max_new_tokens, model.config.block_size // 2)
    ids, dropped = prompt(messages, tok, model.config.block_size - room)
    if dropped:
        print(f"(the {dropped} oldest messages no longer fit in the context and are left out)", file=sys.stderr)
    answer = []
    stream = TextStream(tok.decode, [])

    def show(token):
        if token.item() != tok.ids['end']:
            answer.append(token.item())
            stream.push(token.item())
    with torch.no_grad(), runtime.autocast:
        model.generate(torch.tensor([ids], device=runtime.device), max_new_tokens, on_token=show,
                       stop_token=tok.ids['end'], **sampling)
    print(flush=True)
    return tok.decode(answer)
