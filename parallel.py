"""
Helpers for torchrun's processes (DDP): values agreed by every rank, and stopping together.
"""
import hashlib
import os
import signal
import sys

import torch


def all_ranks_mean(value, runtime):
    """The mean of a float over all DDP ranks (the value itself without DDP)."""
    if not runtime.ddp:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    torch.distributed.all_reduce(t)
    return t.item() / runtime.world_size


def any_rank(flags, runtime):
    """Whether each flag (a bool or a one-element tensor on the device) is set on any rank, as bools.
    This waits for the device (and, under DDP, for every rank), so training calls it only at its
    checks: log lines and evaluations."""
    flags = torch.stack([torch.as_tensor(flag, device=runtime.device).reshape(()).float() for flag in flags])
    if runtime.ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return [value > 0 for value in flags.tolist()]


def gather_from_ranks(obj, runtime):
    """A list of obj from every rank, in rank order (all ranks must call this together)."""
    if not runtime.ddp:
        return [obj]
    gathered = [None] * runtime.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def leave_group(runtime):
    """Tear torchrun's process group down on every rank together: a rank that leaves while another
    is still finishing a collective makes gloo abort that process at exit ("terminate called
    without an active exception"; benchmarks/fsdp_memory.py hit it in 4 of 6 runs without this)."""
    if runtime.ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


class GracefulStop:
    """Ctrl-C or SIGTERM asks the training loop to stop after the current step and save; a
    second Ctrl-C aborts at once. (torchrun answers Ctrl-C with a SIGTERM to its workers;
    that one is not taken as the second.)"""

    def __init__(self):
        self.requested = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested == 'SIGINT' and name == 'SIGINT':
            print("\nsecond Ctrl-C: stopping now, without saving", file=sys.stderr, flush=True)
            os._exit(130)
        if self.requested is None:
            self.requested = name
            print(f"\n{name}: stopping after this step to save a checkpoint (Ctrl-C again aborts at once)",
                  file=sys.stderr, flush=True)

    def exit_code(self):
        return 128 + signal.Signals[self.requested or 'SIGTERM'].value


def weights_digest(model):
    """A hash of every parameter's bytes, to check that DDP ranks hold the same model."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
