"""Runs the repo's scripts for the tests in processes forked from one that has already imported torch.

A script started with `python script.py` spends a few seconds importing torch (and torch._dynamo, which the
first optimizer step imports) before its first line of work; the suite starts about two hundred and fifty of
them and torchrun starts two workers for each of its twenty-odd runs, on two cores. This server, one per pytest
worker, imports those once; each run is a forked child that becomes `python argv...` (a script, or -m and a
module): its own process and session, environment, cwd, argv, sys.path and standard streams, run as __main__
by runpy and ended by the interpreter's own shutdown (exit status, traceback, atexit, threads). It runs only
what would start the same way: where a variable read at interpreter or torch start-up differs from the
server's own, the run is refused and its asker starts a real interpreter.

Two ways in:
- stdin, from the tests' conftest: a JSON line per request ({argv, cwd, env, stdout, stderr, timeout}; argv
  is what follows `python`; stdin is /dev/null, stdout and stderr go to the files named), a JSON line per
  answer on stdout ({returncode}, {timeout: true} or {refused: true}).
- a Unix socket (the path is the first argument), from tests/python_via_server, which torchrun starts as each
  worker's `python` (PYTHON_EXEC): the worker's argv, cwd and env with its three standard streams; answers
  {started: true} or {refused: true}, then forwards the signal numbers the client sends, and at the end
  sends {returncode}.
"""
import gc
import json
import os
import random
import resource
import runpy
import select
import signal
import socket
import sys
import time

# what torch, its libraries or Python itself read when they start: a run must find the server's own values
READ_AT_STARTUP = ('PYTHON', 'LD_', 'OMP_', 'KMP_', 'MKL_', 'OPENBLAS_', 'DNNL_', 'ONEDNN_', 'TORCH', 'PYTORCH_',
                   'CUDA', 'NCCL_', 'GLOO_', 'NUMPY_')
# ... except these: put on sys.path by the child itself, or set by torchrun for its workers and read only
# when torch.distributed starts
READ_LATER = ('PYTHONPATH', 'TORCHELASTIC_', 'TORCH_NCCL_ASYNC_ERROR_HANDLING')
STARTED_WITH = dict(os.environ)


def refuses(env):
    """Whether a process given env would start differently from this one."""
    differs = {key for key, _ in set(env.items()) ^ set(STARTED_WITH.items())}
    return any(key.startswith(READ_AT_STARTUP) and not key.startswith(READ_LATER) for key in differs)


def serve(listener):
    """Answers requests until stdin closes, accepting worker connections meanwhile. Returns, in a forked child
    only, what that child is to do: (become, request, stdio) or (handle_worker, connection)."""
    running = None  # (pid, pidfd, deadline) of the stdin request being run
    while True:
        watched = [listener, running[1] if running else sys.stdin]
        timeout = max(0.0, running[2] - time.monotonic()) if running else None
        ready = select.select(watched, [], [], timeout)[0]
        if running and not ready:  # out of time: the child and what it started
            os.killpg(running[0], signal.SIGKILL)
            os.waitpid(running[0], 0)
            finish(running, {'timeout': True})
            running = None
        for source in ready:
            if source is listener:
                connection, _ = listener.accept()
                pid = os.fork()
                if pid == 0:  # forks the handler and exits, so that this loop never waits for a handler
                    listener.close()
                    if os.fork() == 0:
                        return handle_worker, connection
                    os._exit(0)
                connection.close()
                os.waitpid(pid, 0)
            elif running:
                finish(running, {'returncode': os.waitstatus_to_exitcode(os.waitpid(running[0], 0)[1])})
                running = None
            else:
                line = sys.stdin.readline()
                if not line:
                    return None
                request = json.loads(line)
                if refuses(request['env']):
                    write_answer({'refused': True})
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    stdio = [os.open(os.devnull, os.O_RDONLY)] + [
                        os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for name in ('stdout', 'stderr')]
                    return become, request, stdio
                running = (pid, os.pidfd_open(pid), time.monotonic() + request['timeout'])


def write_answer(message):
    sys.stdout.write(json.dumps(message) + '\n')
    sys.stdout.flush()


def finish(running, message):
    os.close(running[1])
    write_answer(message)


def handle_worker(connection):
    """One torchrun worker: forks it, passes on the signals its client gets, reports how it ended."""
    quiet = os.open(os.devnull, os.O_RDWR)  # the server's pipes to conftest are not this process's to hold
    os.dup2(quiet, 0)
    os.dup2(quiet, 1)
    os.close(quiet)
    message, stdio, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    request = json.loads(message)
    # as the client would start: the same variables read at start-up, resource limits (a test's file size
    # limit, say) and interpreter options (-u only: the server's stdio is unbuffered already)
    argv = request['argv'][1:] if request['argv'][:1] == ['-u'] else request['argv']
    limits = {name: list(resource.getrlimit(getattr(resource, name))) for name in request['limits']}
    options = argv[0].startswith('-') and argv[0] != '-m' if argv else True
    if refuses(request['env']) or limits != request['limits'] or options:
        connection.send(json.dumps({'refused': True}).encode())
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        connection.close()
        return become(dict(request, argv=argv), stdio)
    for fd in stdio:
        os.close(fd)
    connection.send(json.dumps({'started': True}).encode())
    pidfd = os.pidfd_open(pid)
    while True:
        ready = select.select([connection, pidfd], [], [])[0]
        if pidfd in ready:
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            connection.send(json.dumps({'returncode': status}).encode())
            os._exit(0)
        forwarded = connection.recv(64)
        number = int(forwarded) if forwarded else signal.SIGKILL  # the client gone (SIGKILLed): the worker too
        try:  # the worker's whole group, as torchrun signals it
            os.killpg(pid, number)
        except ProcessLookupError:  # not yet its own group
            os.kill(pid, number)
        if not forwarded:
            os.waitpid(pid, 0)
            os._exit(0)


def become(request, stdio):
    """Turns this forked child into `python argv...` (a script or -m module) started in cwd with stdio as fds 0-2."""
    import numpy
    os.setsid()  # its own process group, so that a timeout kills what it started too
    for fd, opened in enumerate(stdio):
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(request['env'])
    sys.path[1:1] = [path for path in os.environ.get('PYTHONPATH', '').split(os.pathsep) if path]  # as at startup
    os.chdir(request['cwd'])
    numpy.random.seed()  # a fresh process draws its own seeds; a fork would share the server's state
    random.seed()
    if request['argv'][0] == '-m':  # python -m module args: the module's file as argv[0], the cwd first on the path
        sys.argv, sys.path[0] = request['argv'][1:], os.getcwd()
        runpy.run_module(request['argv'][1], run_name='__main__', alter_sys=True)
    else:
        sys.argv, sys.path[0] = request['argv'], os.path.dirname(request['argv'][0])
        runpy.run_path(request['argv'][0], run_name='__main__')


if __name__ == '__main__':
    import numpy  # noqa: F401  (what torch imports anyway)
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    # out of the collector's sight, so that no child's collections (or its exit's) write to these pages
    # and copy them: ending a child took over a second without this, a quarter of one with it
    gc.collect()
    gc.freeze()
    workers = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    workers.bind(sys.argv[1])
    workers.listen(16)
    child = serve(workers)
    if child is not None:
        child[0](*child[1:])
