"""Made-up test data, the same wherever the tests run (they must not depend on ../shared or a download)."""
import json
import random

import numpy as np


def sample_text(n_chars=30_000):
    """Made-up verse: speakers' names and lines of words, every letter in both cases, the punctuation of a play."""
    rng = random.Random(0)
    words = ('the king my lord thou art not what say and of a quick brown fox jumps over lazy dog while '
             'she holds her hammer in your hand then we go to see he is on roof with shingles up down by '
             'ground ladder climbs man woman sitting starts pulling throws them very zounds xanthe').split()
    speakers = ('ROMEO', 'JULIET', 'KING RICHARD', 'First Citizen', 'MENENIUS')
    lines = []
    while sum(map(len, lines)) < n_chars:
        lines.append(f"{rng.choice(speakers)}:")
        for _ in range(rng.randint(1, 4)):
            sentence = ' '.join(rng.choice(words) for _ in range(rng.randint(3, 9)))
            lines.append(sentence.capitalize() + rng.choice(".,;:!?-'"))
        lines.append('')  # a blank line between speeches
    return '\n'.join(lines)[:n_chars]


def random_hf_gpt2(path, vocab_size=100, n_positions=64, activation='gelu_new', scale=8.0):
    """A small random GPT2LMHeadModel saved to path; weights scaled up so that small numerical
    differences (e.g. the wrong GELU, or which ending is likelier) show clearly."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                                     activation_function=activation, bos_token_id=None, eos_token_id=None)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith('.weight') and p.dim() == 2:
                p.mul_(scale)
    hf_model.save_pretrained(path)
    return hf_model


# HellaSwag in its own file format, for eval.py and train.py --hellaswag_interval
def hellaswag_line(ind, ctx_a, ctx_b, endings, label):
    """One line of hellaswag_val.jsonl, with every field the real file has."""
    return json.dumps({"ind": ind, "activity_label": "Roof shingle removal", "ctx_a": ctx_a, "ctx_b": ctx_b,
                       "ctx": f"{ctx_a} {ctx_b}".strip(), "split": "val", "split_type": "indomain", "label": label,
                       "endings": endings, "source_id": f"activitynet~v_{ind:08d}"})


def write_hellaswag(path, examples):
    """examples: (ctx_a, ctx_b, endings, label) each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(hellaswag_line(i, *e) + '\n' for i, e in enumerate(examples)), encoding='utf-8')
    return path


WORDS = ('a man is sitting on the roof he starts pulling up shingles and throws them down to the ground while '
         'a woman holds the ladder then she climbs up with a hammer in her hand').split()


def varied_examples(n, seed=0):
    """n examples of varied lengths, the second one with a context longer than the models' context."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        ctx = ' '.join(rng.choice(WORDS, 150 if i == 1 else rng.integers(3, 30)))
        endings = [' '.join(rng.choice(WORDS, rng.integers(1, 15))) + '.' for _ in range(4)]
        examples.append((ctx.capitalize() + '.', WORDS[i % len(WORDS)], endings, int(rng.integers(4))))
    return examples
