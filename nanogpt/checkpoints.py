"""
Checkpoints in the original's format (model, optimizer, model_args, iter_num, best_val_loss,
config), written atomically, read with clear errors; pretrained GPT-2 weights; random states.
"""
import atexit
import json
import os
import pickle
import random
import socket
import sys
import time
import warnings

import numpy as np
import torch

from model import GPT, MODERN_DEFAULTS, PRETRAINED, GPTConfig
from nanogpt import data
from nanogpt.distributed import load_optimizer_state, local
from nanogpt.report import fail


CKPT_NAME = 'ckpt.pt'  # the checkpoint train.py writes and sample.py reads, as in the original


LAST_NAME = 'last.pt'  # the latest state, written when a run is stopped early, for resuming


LOCK_NAME = 'train.lock'  # while a run writes into its out_dir: who it is, so that a second run is refused


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


def ensure_writable(folder, setting='out_dir'):
    """Fail now, not after hours of training, when checkpoints (or reports) could not be written;
    setting names the option that chose the folder."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError as e:
        fail(f"{setting} {folder} is not writable ({e.strerror}); choose another with --{setting}=PATH")


def lock_out_dir(out_dir):
    """Claim out_dir for this run until it exits, or refuse: two runs in one out_dir overwrite each
    other's checkpoints and metrics. A lock left by a dead process of this host (kill -9, a second
    Ctrl-C) is taken over; one from another host cannot be checked from here, so it refuses."""
    path = os.path.join(out_dir, LOCK_NAME)
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    while True:
        try:  # O_EXCL: of two runs starting together, exactly one creates the file
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:  # its run is between creating and writing it, or died right there
                fail(f"out_dir {out_dir} is in use by another run (its lock {path} is empty or unreadable); "
                     f"wait for it, choose another --out_dir, or delete {path} if no run is using it")
            if holder['host'] == me['host'] and not _alive(holder['pid']):
                print(f"taking over {path}: the run that left it (pid {holder['pid']}, started "
                      f"{holder.get('started', '?')}) is gone")
                try:
                    os.remove(path)
                except FileNotFoundError:  # another run starting now took it over first: try again
                    pass
                except OSError as e:
                    fail(f"cannot take over {path} ({e.strerror}); delete it, its run is gone")
                continue
            fail(f"out_dir {out_dir} is in use by another run (pid {holder['pid']} on host {holder['host']}, "
                 f"started {holder.get('started', '?')}); wait for it, choose another --out_dir, "
                 f"or delete {path} if that run is gone")
        except OSError as e:
            fail(f"cannot create {path} ({e.strerror}); choose another --out_dir")
        with os.fdopen(fd, 'w') as f:
            f.write(json.dumps(me) + '\n')
        # at exit: sys.exit, an uncaught error and a Ctrl-C/SIGTERM stop all get here; os._exit (a
        # second Ctrl-C) and kill -9 do not, and leave a lock the next run on this host takes over
        atexit.register(_unlock, path, me['pid'])
        return path


def _read_lock(path):
    """A lock file's {'pid', 'host', 'started'}, or None when it cannot be read as one."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and isinstance(holder.get('pid'), int) and 'host' in holder \
            else None
    except (OSError, ValueError):
        return None


def _alive(pid):
    if pid == os.getpid():  # a restarted container hands out the same pids: the lock is a dead run's
        return False
    try:
        os.kill(pid, 0)  # signal 0: is there such a process, without disturbing it
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _unlock(path, pid):
    # only the process that took the lock (not a forked child), and only while it is still ours
    holder = _read_lock(path)
    if os.getpid() == pid and holder is not None and holder['pid'] == pid:
        try:
            os.remove(path)
        except OSError:
            pass


def save_checkpoint(checkpoint, path):
    """Write atomically: a crash or kill -9 mid-save leaves the previous file intact. A failed
    write (a full disk, a file-size limit) takes its partial file away, says so in one line on
    stderr and returns False; the caller stops the run."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        print(f"{os.path.basename(sys.argv[0])}: could not write {path} ({_write_error(e)}); "
              f"{_resumable(os.path.dirname(path))}", file=sys.stderr, flush=True)
        return False
    finally:
        try:
            os.remove(tmp)  # still there only when the write failed
        except OSError:
            pass


def _write_error(e):
    """The OS's reason for a failed write: torch.save's RuntimeError ("unexpected pos 704 vs 598")
    names none, but the OSError the file raised under it is its context."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None and cause.strerror:
        return cause.strerror
    return first_line(e)


def first_line(e):
    """An exception's message cut to one short line, for a one-line error (its type if it has none)."""
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__


def _resumable(out_dir):
    """What is left to resume from after a failed write, in words."""
    path = latest_checkpoint(out_dir)
    try:
        return (f"the previous checkpoint {path} is intact (iteration {checkpoint_iter(path)}): "
                f"free some space and resume with --init_from=resume")
    except Exception:  # none, or unreadable
        return "no earlier checkpoint is there: free some space and train again"


def load_checkpoint(path, device='cpu', mmap=False):
    """Load a checkpoint of ours or of the original nanoGPT, or stop with a clear error. With
    mmap (device 'cpu' only) the tensors are read from the file as they are used, and processes
    that load the same file share its pages."""
    if not os.path.exists(path):
        fail(f"no checkpoint at {path}; train one first (python train.py ...) "
             f"or point --out_dir at the folder that holds {CKPT_NAME}")
    try:
        with warnings.catch_warnings():  # the failure below says it better than torch's warnings
            warnings.simplefilter('ignore')
            checkpoint = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # weights_only refuses code objects: safer than running them
        fail(f"{path} is not a readable checkpoint (it holds Python objects, not just tensors and plain "
             f"values); load only checkpoints written by this repo or the original nanoGPT")
    except Exception as e:  # truncated zip, not a torch file at all
        fail(f"{path} is not a readable checkpoint ({first_line(e)}); it may be truncated or "
             f"written by another program: train again or restore a good copy")
    if not isinstance(checkpoint, dict) or not {'model', 'model_args'} <= checkpoint.keys():
        fail(f"{path} is not a nanoGPT checkpoint (it lacks 'model' and 'model_args')")
    return checkpoint


def model_from_checkpoint(checkpoint, path, **overrides):
    """Build the GPT a checkpoint describes and load its weights (dropout may be overridden)."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_extra_args', {}), **overrides}
    try:
        model = GPT(GPTConfig(**args))
        # checkpoints saved from a torch.compile'd model carry this prefix on every key
        state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        fail(f"{path} does not hold a model this code can build ({str(e).splitlines()[0][:200]})")
    return model


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
    if 'meta' not in checkpoint or data.tokenizer_name(checkpoint['meta']) == data.tokenizer_name(meta) == 'char':
        return  # two character vocabularies: the vocabulary check after this one names their sizes
    if not data.same_tokenizer(checkpoint['meta'], meta):
        fail(f"the checkpoint was trained with another tokenizer ({data.tokenizer_name(checkpoint['meta'])}) "
             f"than {data_dir} has ({data.tokenizer_name(meta)}); train on data of its tokenizer")


def load_training_state(checkpoint, model, optimizer, scaler, optimizer_name, fsdp=False):
    """A resumed run's optimizer state (sharded under FSDP) and float16 loss scale."""
    try:
        if fsdp:
            load_optimizer_state(model, optimizer, checkpoint['optimizer'])
        else:
            optimizer.load_state_dict(checkpoint['optimizer'])
    except (KeyError, ValueError, TypeError):
        trained_with = checkpoint.get('config', {}).get('optimizer', 'adamw')
        fail(f"the checkpoint's optimizer state is not {optimizer_name}'s; resume with --optimizer={trained_with}, "
             f"the optimizer it was trained with")
    if checkpoint.get('scaler'):  # empty unless the checkpoint was trained in float16
        scaler.load_state_dict(checkpoint['scaler'])


def changed_settings(checkpoint, config):
    """'name old -> new' for each setting a resumed run changes from the checkpoint's."""
    return [f"{k} {v!r} -> {config[k]!r}" for k, v in checkpoint.get('config', {}).items()
            if k in config and k != 'init_from' and v != config[k]]


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


def rng_state():
    """Every random state that drives batches and dropout, to make a resume exact. Plain
    lists and tensors only, so checkpoints load with torch.load(weights_only=True)."""
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
        'torch': torch.get_rng_state(),
        # this process's GPU only: asking for every GPU's state would open a context on each of them
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state):
    random.setstate(state['python'])
    kind, key, *rest = state['numpy']
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state['torch'].cpu())
    if isinstance(state['cuda'], torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())


def latest_checkpoint(out_dir):
    """The checkpoint to resume from: ckpt.pt, or last.pt (written when a run is stopped) if
    that one is further along."""
    best, last = os.path.join(out_dir, CKPT_NAME), os.path.join(out_dir, LAST_NAME)
    if not os.path.exists(last):
        return best
    if not os.path.exists(best):
        return last
    try:
        return last if checkpoint_iter(last) > checkpoint_iter(best) else best
    except Exception:
        return best  # unreadable: loading it properly gives the clear error


def checkpoint_iter(path):
    """A checkpoint's iteration, without reading its tensors (memory-mapped)."""
    return torch.load(path, map_location='cpu', mmap=True, weights_only=True)['iter_num']


def describe(path):
    """A checkpoint as a run names it to its user: its path and iteration, or that there is none."""
    return f"{path} (iteration {checkpoint_iter(path)})" if os.path.exists(path) else "none was written"


def all_finite(model):
    """True when every parameter is finite (under FSDP: this rank's shards of them): a diverged
    model is never written over a good one."""
    return all(torch.isfinite(local(p)).all() for p in model.parameters())
