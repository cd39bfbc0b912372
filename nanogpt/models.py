"""
The GPT a run trains or samples: built from a checkpoint, from another run's out_dir, or from
OpenAI's GPT-2 weights; what a checkpoint's model_args hold; the settings a model contradicts;
a checkpoint exported as a Hugging Face GPT-2 (export_hf.py).
"""
import os
import pickle

import torch

from model import GPT, HF_TRANSPOSED, MODERN_DEFAULTS, PRETRAINED, GPTConfig
from nanogpt import data, tokens
from nanogpt.checkpoints import CKPT_NAME, load_checkpoint
from nanogpt.report import describe_choices, fail, first_line

ORIGINAL_MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')
# what a resume must keep: the model's shape and its modern choices
MODEL_SHAPE_KEYS = tuple(k for k in ORIGINAL_MODEL_ARGS if k != 'dropout') + tuple(MODERN_DEFAULTS)


def model_args_of(config):
    """A checkpoint's model_args: the original's keys, plus each modern choice that differs from GPT-2's.
    A classic model's checkpoint is thus the original's; a modern one names fields the original's
    GPTConfig does not have, so the original refuses it rather than building a wrong model."""
    args = {k: getattr(config, k) for k in ORIGINAL_MODEL_ARGS}
    args.update(config.modern_choices())
    return args


def model_from_checkpoint(checkpoint, path, **overrides):
    """Build the GPT a checkpoint describes and load its weights (dropout may be overridden)."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_extra_args', {}), **overrides}
    try:
        model = GPT(GPTConfig(**args))
        # checkpoints saved from a torch.compile'd model carry this prefix on every key
        state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        fail(f"{path} does not hold a model this code can build ({first_line(e)})")
    return model


def new_model(model_args):
    """A GPT from scratch, or a one-line error for a shape it cannot have (n_embd not divisible by n_head...)."""
    try:
        return GPT(GPTConfig(**model_args))
    except ValueError as e:
        fail(str(e))


def check_overrides(model, config, explicit, out_dir=None, pretrained=None):
    """Shape settings given on the command line that the model contradicts, a one-line error: the
    checkpoint resumed from out_dir, or pretrained weights (whose block_size may be cropped)."""
    for k in MODEL_SHAPE_KEYS:
        has = getattr(model.config, k)
        if k not in explicit or config[k] == has or (pretrained and k == 'block_size'):
            continue
        if pretrained:
            fail(f"{pretrained} has {k}={has}, not {config[k]}; drop --{k}")
        fail(f"cannot resume with {k}={config[k]}: the checkpoint in {out_dir} has {k}={has}; drop --{k} "
             f"or start a new run in another out_dir")


def check_tokenizer(checkpoint, meta, data_dir):
    """A resumed checkpoint must read the dataset's tokens as they were written: the same tokenizer
    (checked where the checkpoint records one; the original's do not)."""
    if 'meta' not in checkpoint or tokens.tokenizer_name(checkpoint['meta']) == tokens.tokenizer_name(meta) == 'char':
        return  # two character vocabularies: the vocabulary check after this one names their sizes
    if not tokens.same_tokenizer(checkpoint['meta'], meta):
        fail(f"the checkpoint was trained with another tokenizer ({tokens.tokenizer_name(checkpoint['meta'])}) "
             f"than {data_dir} has ({tokens.tokenizer_name(meta)}); train on data of its tokenizer")


def check_vocab_size(model, meta, data_dir):
    """The model must embed every token id of the dataset's own vocabulary (its meta.pkl), and no more."""
    if meta and meta['vocab_size'] != model.config.vocab_size:
        fail(f"the model's vocabulary ({model.config.vocab_size} tokens) differs from {data_dir}/meta.pkl "
             f"({meta['vocab_size']}); train on the dataset the checkpoint was made for")


def is_run(init_from):
    """Whether init_from is an out_dir of ours (it holds ckpt.pt), to finetune from."""
    return os.path.isfile(os.path.join(init_from, CKPT_NAME))


def run_model(out_dir, meta, data_dir, dropout=0.0):
    """The model of out_dir/ckpt.pt, to start a new run from (finetuning): its weights only, after
    checking that it reads data_dir's tokens."""
    path = os.path.join(out_dir, CKPT_NAME)
    checkpoint = load_checkpoint(path, 'cpu', mmap=True)
    check_tokenizer(checkpoint, meta, data_dir)
    return model_from_checkpoint(checkpoint, path, dropout=dropout)


def pad_vocab(model, vocab_size=50304):
    """OpenAI's GPT-2 has 50257 tokens; chat finetuning's tokens take ids 50257.. of the 50304 that
    models trained here have (nanogpt/chat.py). The new rows start at the mean embedding, so the
    new tokens begin as an average token rather than noise; an untied head's new rows at zero."""
    old = model.transformer.wte.weight.data
    extra = vocab_size - old.size(0)
    model.transformer.wte = torch.nn.Embedding(vocab_size, old.size(1))
    model.transformer.wte.weight.data = torch.cat([old, old.mean(0, keepdim=True).expand(extra, -1)])
    if model.config.tie_weights:
        model.lm_head = torch.nn.Linear(old.size(1), vocab_size, bias=False)
        model.lm_head.weight = model.transformer.wte.weight
    else:
        head = model.lm_head.weight.data
        model.lm_head = torch.nn.Linear(old.size(1), vocab_size, bias=False)
        model.lm_head.weight.data = torch.cat([head, head.new_zeros(extra, head.size(1))])
    model.config.vocab_size = vocab_size
    model.new_token_ids = range(old.size(0), vocab_size)


def is_pretrained(init_from):
    return init_from in PRETRAINED or os.path.isdir(init_from)


def pretrained_model(name_or_dir, dropout=0.0):
    """GPT.from_pretrained with a clear error for each way it can go wrong."""
    try:
        import transformers
        transformers.utils.logging.disable_progress_bar()  # stderr is for errors: one line each
        return GPT.from_pretrained(name_or_dir, dict(dropout=dropout))
    except ImportError:
        fail("loading GPT-2 weights needs transformers: pip install transformers")
    except ValueError as e:
        fail(str(e))
    except OSError as e:  # not downloadable (offline), or a folder without a model in it
        fail(f"could not load {name_or_dir} ({first_line(e)}); OpenAI's weights download "
             f"from the Hugging Face hub once, or give a folder saved with save_pretrained")


def export_hf(ckpt_path, export_dir):
    """The model of the checkpoint at ckpt_path as a Hugging Face GPT2LMHeadModel folder in export_dir,
    with the same logits (zero biases for a model trained without them, which changes nothing), and
    its character vocabulary beside it as meta.pkl."""
    checkpoint = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(checkpoint, ckpt_path)
    if not model.config.is_classic():
        fail(f"{ckpt_path} is a modern-recipe model ({describe_choices(model.config)}), which Hugging Face's "
             f"GPT2LMHeadModel cannot express; sample it with sample.py")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        fail("exporting needs transformers: pip install transformers")
    c = model.config
    eot = tokens.GPT2_EOT if c.vocab_size > tokens.GPT2_EOT else None  # only meaningful with GPT-2's vocabulary
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function={'tanh': 'gelu_new', 'none': 'gelu'}[c.gelu_approximate], layer_norm_epsilon=1e-5,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, tie_word_embeddings=True,
        bos_token_id=eot, eos_token_id=eot)
    hf_model = GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    state = {}
    for name, like in hf_model.state_dict().items():
        if name in ours:
            state[name] = ours[name].t() if name.endswith(HF_TRANSPOSED) else ours[name]
        elif name.endswith('.bias'):  # trained with bias=False: a zero bias is the same model
            state[name] = torch.zeros_like(like)
    hf_model.load_state_dict(state, strict=True)
    hf_model.save_pretrained(export_dir)
    if checkpoint.get('meta'):
        with open(os.path.join(export_dir, 'meta.pkl'), 'wb') as f:
            pickle.dump(checkpoint['meta'], f)
    print(f"exported {ckpt_path} (iteration {checkpoint['iter_num']}) to {export_dir}: "
          f"GPT2LMHeadModel.from_pretrained({export_dir!r})")


def inference_model(init_from, out_dir):
    """The model sample.py and eval.py run, on the CPU (the caller moves it), with its character
    vocabulary (None for GPT-2 BPE) and a name for reports: out_dir/ckpt.pt for init_from='resume',
    else GPT-2 weights or a Hugging Face folder. A checkpoint is memory-mapped, so its optimizer
    state (twice the model's size with AdamW) is never read, let alone copied to a GPU."""
    if init_from == 'resume':
        ckpt_path = os.path.join(out_dir, CKPT_NAME)
        checkpoint = load_checkpoint(ckpt_path, 'cpu', mmap=True)
        model = model_from_checkpoint(checkpoint, ckpt_path, dropout=0.0)
        # our checkpoints keep the vocabulary; the original's name the dataset whose meta.pkl has it
        dataset = checkpoint.get('config', {}).get('dataset')
        meta = checkpoint.get('meta') or (data.read_meta(os.path.join('data', dataset, 'meta.pkl')) if dataset else None)
        if meta is not None and meta['vocab_size'] != model.config.vocab_size:
            fail(f"the checkpoint's vocabulary ({model.config.vocab_size} tokens) differs from its "
                 f"dataset's meta.pkl ({meta['vocab_size']}); was the dataset prepared again since?")
        name = f"{ckpt_path} (iteration {checkpoint.get('iter_num', '?')})"
    elif is_pretrained(init_from):
        model = pretrained_model(init_from)
        meta = data.read_meta(os.path.join(init_from, 'meta.pkl'))  # export_hf.py keeps a character vocabulary here
        name = init_from
    else:
        fail(f"unknown init_from {init_from!r}; use 'resume' (with --out_dir), a GPT-2 name or a Hugging Face folder")
    return model, meta, name
