"""
A run's out_dir: writable before any work starts, held by one run at a time (its lock file), and
an earlier run's checkpoint kept aside when a new run starts there.
"""
import atexit
import json
import os
import shutil
import socket
import time

from nanogpt.checkpoints import CKPT_NAME, LAST_NAME, describe
from nanogpt.report import fail

LOCK_NAME = 'train.lock'  # while a run writes into its out_dir: who it is, so that a second run is refused
PREVIOUS = 'previous'  # in an out_dir: the run before this one, moved aside, an out_dir of its own


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


def keep_previous_run(out_dir, init_from):
    """A new run into an out_dir that holds an earlier run's checkpoint: that run's checkpoints and
    metrics move to out_dir/previous/, where sample.py, eval.py or a resume find them, replacing what
    the run before it had left there. Starting over by running a command again keeps working, as in
    the original, and loses no run without a line that says so."""
    files = [name for name in (CKPT_NAME, LAST_NAME, 'metrics.jsonl') if os.path.exists(os.path.join(out_dir, name))]
    if not {CKPT_NAME, LAST_NAME} & set(files):
        return
    if os.path.realpath(init_from) == os.path.realpath(out_dir):
        fail(f"init_from is this out_dir ({out_dir}): --init_from=resume continues its run; to finetune its "
             f"weights in a new run, give that run another --out_dir")
    aside = os.path.join(out_dir, PREVIOUS)
    replaced = os.path.isdir(aside)
    try:
        what = describe(os.path.join(out_dir, CKPT_NAME if CKPT_NAME in files else LAST_NAME))
    except Exception:  # unreadable: it is still moved, not judged
        what = 'a checkpoint'
    try:
        if replaced:
            shutil.rmtree(aside)
        os.makedirs(aside)
        for name in files:
            os.replace(os.path.join(out_dir, name), os.path.join(aside, name))
    except OSError as e:
        fail(f"cannot move the earlier run in {out_dir} aside to {aside} ({e.strerror}); continue it with "
             f"--init_from=resume, or choose another --out_dir")
    print(f"{out_dir} held an earlier run, its checkpoint {what}: moved it to {aside}/ (sample or resume it with "
          f"--out_dir={aside})"
          + ("; the run before that one, which was there, is gone" if replaced else '')
          + "; to continue a run instead of starting over, use --init_from=resume", flush=True)
