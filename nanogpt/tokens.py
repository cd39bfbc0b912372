"""
Text to token ids and back: a dataset's characters, a BPE of its own (data/prepare.py), or GPT-2's
BPE through tiktoken; and the special tokens of documents and chats.
"""
from nanogpt.report import fail

GPT2_EOT = 50256  # GPT-2 BPE's <|endoftext|>, which ends each document of its datasets
EOT_TOKEN = '<|endoftext|>'
# chat finetuning's tokens (nanogpt/chat.py): special tokens of data/prepare.py's BPEs, and with
# GPT-2 BPE ids 50257-50260 of the padded vocabulary
CHAT_TOKENS = {'system': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>', 'end': '<|end|>'}
GPT2_CHAT_IDS = {name: GPT2_EOT + 1 + i for i, name in enumerate(CHAT_TOKENS)}


def tokenizer_name(meta):
    """'gpt2' (no meta.pkl), 'char' or 'bpe': what a dataset's or a checkpoint's tokens are."""
    return 'gpt2' if meta is None else meta.get('tokenizer', 'char')


def bpe_tokenizer(meta):
    """The byte-level BPE that data/prepare.py trained, from the JSON a meta.pkl carries."""
    from tokenizers import Tokenizer
    return Tokenizer.from_str(meta['tokenizer_json'])


def same_tokenizer(a, b):
    """Whether two meta.pkl contents (None: GPT-2 BPE) turn text into the same ids."""
    if tokenizer_name(a) != tokenizer_name(b):
        return False
    if tokenizer_name(a) == 'bpe':
        return a['tokenizer_json'] == b['tokenizer_json']
    return a is None or a['stoi'] == b['stoi']


def load_tokenizer(meta):
    """encode/decode from a dataset's meta.pkl (characters, or a BPE of its own), or GPT-2 BPE without one."""
    if tokenizer_name(meta) == 'bpe':
        bpe = bpe_tokenizer(meta)
        return (lambda text: bpe.encode(text).ids), (lambda ids: bpe.decode(ids, skip_special_tokens=False))
    if meta is not None:
        stoi, itos = meta['stoi'], meta['itos']

        def encode(text):
            unknown = sorted(set(text) - stoi.keys())
            if unknown:
                fail(f"the prompt has characters this model's vocabulary lacks: {''.join(unknown)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    enc = gpt2_encoding()
    return (lambda text: enc.encode(text, allowed_special={EOT_TOKEN})), enc.decode


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, or a clear error when it can be neither downloaded nor found cached."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        fail(f"cannot load the GPT-2 BPE tokenizer ({type(e).__name__}); tiktoken downloads it once, or "
             f"set TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's cached copies of its files")

