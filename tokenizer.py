"""
Text to token ids and back: a dataset's character vocabulary, or GPT-2's BPE (tiktoken).
"""
import sys

from errors import fail


def load_tokenizer(meta):
    """encode/decode from a dataset's meta.pkl (character level), or GPT-2 BPE without one."""
    if meta is not None:
        stoi, itos = meta['stoi'], meta['itos']

        def encode(text):
            unknown = sorted(set(text) - stoi.keys())
            if unknown:
                fail(f"the prompt has characters this model's vocabulary lacks: {''.join(unknown)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    enc = gpt2_encoding()
    return (lambda text: enc.encode(text, allowed_special={'<|endoftext|>'})), enc.decode


class TextStream:
    """Print a sample as its tokens arrive. Each time, decode all the ids so far and print what is
    new, holding back a trailing incomplete character (a BPE token can end inside one)."""

    def __init__(self, decode, ids, out=sys.stdout):
        self.decode, self.ids, self.out, self.shown = decode, list(ids), out, 0
        self._show()

    def push(self, token_id):
        self.ids.append(token_id)
        self._show()

    def _show(self):
        text = self.decode(self.ids)
        if not text.endswith('\ufffd'):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, or a clear error when it can be neither downloaded nor found cached."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        fail(f"cannot load the GPT-2 BPE tokenizer ({type(e).__name__}); tiktoken downloads it once, or "
             f"set TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's cached copies of its files")
