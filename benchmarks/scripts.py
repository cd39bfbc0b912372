"""The repo's scripts run as a user runs them, for the benchmarks that drive them: every benchmark
starts its processes here, so that all of them run the same interpreter the same way. The
benchmarks put the repo on sys.path before they import this."""
import json
import os
import subprocess
import sys
import tempfile

from nanogpt.checkpoints import CKPT_NAME

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(script, *args, nproc=None):
    """The command line of script (a path in the repo, or an absolute one such as the original
    nanoGPT's train.py): `python script args`, or under `torchrun --standalone` with nproc processes."""
    launcher = [sys.executable] if nproc is None else \
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
    return [*launcher, os.path.join(REPO, script), *args]


def start(argv, env=None, **popen):
    """A command() started, its output unbuffered (a reader sees each line when it is printed), env
    added to this process's environment; popen as subprocess.Popen takes it."""
    return subprocess.Popen(argv, env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})), **popen)


def run_script(script, *args, cwd=None, nproc=None, env=None, check=True):
    """script run to its end in cwd: the CompletedProcess (text); with check, a failure stops the
    benchmark with the script's stderr."""
    proc = start(command(script, *args, nproc=nproc), env, cwd=cwd, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if check and proc.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def whole_val_loss(out_dir, dataset, block_size=64):
    """The loss of out_dir's checkpoint (ours or the original nanoGPT's) on all of data/<dataset>/val.bin,
    each token predicted from the start of its block_size-token block, the same blocks for every run,
    so that runs compare exactly where the estimates they log would not; None when a run too short to
    evaluate saved no checkpoint."""
    if not os.path.exists(os.path.join(out_dir, CKPT_NAME)):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        results = os.path.join(scratch, 'eval.jsonl')
        run_script('eval.py', f'--out_dir={out_dir}', f'--dataset={dataset}', f'--stride={block_size}',
                   f'--results_file={results}', cwd=REPO)
        with open(results) as f:
            return round(next(r['value'] for r in map(json.loads, f) if r['metric'] == 'loss'), 4)
