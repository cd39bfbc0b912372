"""
Checkpoints in the original's format (model, optimizer, model_args, iter_num, best_val_loss,
config), written atomically, read with clear errors; which one a resume starts from.
"""
import os
import pickle
import sys
import warnings

import torch

from nanogpt.distributed import load_optimizer_state, local
from nanogpt.report import fail, first_line, read_metrics

CKPT_NAME = 'ckpt.pt'  # the checkpoint train.py writes and sample.py reads, as in the original
LAST_NAME = 'last.pt'  # the latest state, written when a run is stopped early, for resuming


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


def describe_changes(checkpoint, config, path, world_size):
    """What a resumed run does otherwise than the run that wrote the checkpoint at path: its settings
    ('name old -> new' each) and the number of processes, each rank drawing its own batches."""
    lines = []
    written_by = len(checkpoint.get('rng', ())) or world_size  # one random state per rank (the original's: none)
    if written_by != world_size:
        lines.append(f"{written_by} processes wrote {path}, {world_size} resume it: the batches differ from "
                     f"iteration {checkpoint['iter_num']} on")
    if changed := [f"{k} {v!r} -> {config[k]!r}" for k, v in checkpoint.get('config', {}).items()
                   if k in config and k != 'init_from' and v != config[k]]:
        lines.append(f"settings changed since the checkpoint: {', '.join(changed)}")
    return '\n'.join(lines)


def latest_checkpoint(out_dir):
    """The checkpoint to resume from: the further along of ckpt.pt and last.pt (written when a run
    is stopped) that reads; ckpt.pt when neither does, for load_checkpoint's clear error."""
    readable = [(iteration, name == CKPT_NAME, path) for name in (CKPT_NAME, LAST_NAME)
                if (iteration := _iteration(path := os.path.join(out_dir, name))) is not None]
    return max(readable)[2] if readable else os.path.join(out_dir, CKPT_NAME)


def restart_point(out_dir, init_from, attempt, say=True):
    """Where a group that torchrun started again after a rank failed (attempt > 0) goes on from:
    'resume', from this run's latest checkpoint that reads, whatever init_from said at first; or
    init_from itself when the run saved none before it failed. With say, a line says which."""
    metrics = os.path.join(out_dir, 'metrics.jsonl')
    reached = max((e.get('iter', 0) for e in read_metrics(out_dir)), default=0) if os.path.exists(metrics) else 0
    passed_over = []
    for name in (CKPT_NAME, LAST_NAME):
        path = os.path.join(out_dir, name)
        if os.path.exists(f"{path}.tmp"):  # writes are atomic: a .tmp left behind is a write the failure cut short
            passed_over.append(f"{path}.tmp (cut short)")
        if os.path.exists(path) and _iteration(path) is None:  # damaged some other way: a copy, a disk
            passed_over.append(f"{path} (unreadable)")
    passed_over = f"; passed over {', '.join(passed_over)}" if passed_over else ''
    path = latest_checkpoint(out_dir)
    iteration = _iteration(path)
    head = f"torchrun restart {attempt} (a rank failed)"
    if iteration is not None:
        line = (f"{head}: resuming from {path} at iteration {iteration}; {max(reached - iteration, 0)} iterations "
                f"done again{passed_over}")
    else:
        line = f"{head}: no checkpoint of this run yet{passed_over}; starting again from init_from={init_from!r}"
    if say:
        print(line, flush=True)
    return init_from if iteration is None else 'resume'


def _iteration(path):
    """checkpoint_iter, or None where there is no checkpoint that reads: missing, cut short, not one."""
    try:
        return checkpoint_iter(path)
    except Exception:
        return None


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
