"""Runs the repo's scripts for the tests in processes forked from one that has already imported torch.

A script started with `python script.py` spends a few seconds importing torch (and torch._dynamo, which the
first optimizer step imports) before its first line of work; the suite starts about two hundred of them
(torchrun's launchers included) on two cores. This server, one per pytest worker, imports those once; each
request forks a child that becomes `python argv...` (a script, or -m and a module): its own process and
process group, environment, cwd, argv, sys.path, stdin from /dev/null, stdout and stderr to files, run as
__main__ by runpy and ended by the interpreter's own shutdown (exit status, traceback, atexit, threads). The
tests' conftest sends a run here only when the variables read at interpreter or torch start-up are the
server's own; anything else gets a real subprocess.

Protocol: a JSON line per request on stdin ({argv, cwd, env, stdout, stderr, timeout}; argv is what follows
`python`), a JSON line per answer on stdout ({returncode} or {timeout: true}).
"""
import json
import os
import runpy
import select
import signal
import sys

import numpy  # noqa: F401  (what torch imports anyway; named so the child can reseed it)
import torch  # noqa: F401
import torch._dynamo  # noqa: F401


def serve():
    """Answers requests until stdin closes; returns (in a forked child only) the request that child runs."""
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        answers.write(json.dumps(wait(pid, request['timeout'])) + '\n')
        answers.flush()
    return None


def wait(pid, timeout):
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {'timeout': True}
        return {'returncode': os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}
    finally:
        os.close(pidfd)


def become(request):
    """Turns this forked child into `python argv...` (a script or -m module) started in cwd."""
    os.setsid()  # its own process group, so that a timeout kills what it started too
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(request['env'])
    sys.path[1:1] = [path for path in os.environ.get('PYTHONPATH', '').split(os.pathsep) if path]  # as at startup
    os.chdir(request['cwd'])
    numpy.random.seed()  # a fresh process draws its own seed; a fork would share the server's state
    if request['argv'][0] == '-m':  # python -m module args: the module's file as argv[0], the cwd first on the path
        sys.argv, sys.path[0] = request['argv'][1:], os.getcwd()
        runpy.run_module(request['argv'][1], run_name='__main__', alter_sys=True)
    else:
        sys.argv, sys.path[0] = request['argv'], os.path.dirname(request['argv'][0])
        runpy.run_path(request['argv'][0], run_name='__main__')


if __name__ == '__main__':
    child_request = serve()
    if child_request is not None:
        become(child_request)
