"""
A run's out_dir: writable before any work starts, and held by one run at a time (its lock file).
"""
import atexit
import json
import os
import socket
import time

from nanogpt.report import fail

LOCK_NAME = 'train.lock'  # while a run writes into its out_dir: who it is, so that a second run is refused


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
