"""Never lose a run: exact resume, atomic checkpoints, clean stops on signals, non-finite loss, a full
disk, one run per out_dir."""
import atexit
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_MODEL, script_env, assert_one_line_error, run_torchrun, train_losses
from nanogpt import out_dirs
from nanogpt.report import read_metrics

RUN = ['--dataset=tiny', *TINY_MODEL, '--dropout=0.1', '--eval_interval=10', '--log_interval=1']


def test_resume_is_exact(run, tmp_path, char_data):
    run('train.py', *RUN, '--out_dir=straight', '--max_iters=20', '--always_save_checkpoint=True')
    run('train.py', *RUN, '--out_dir=split', '--max_iters=10', '--always_save_checkpoint=True')
    assert not (tmp_path / 'split' / 'train.lock').exists()  # a finished run leaves no lock to take over
    result = run('train.py', *RUN, '--out_dir=split', '--max_iters=20', '--always_save_checkpoint=True',
                 '--init_from=resume', '--learning_rate=3e-3')
    assert 'settings changed since the checkpoint: max_iters 10 -> 20' in result.stdout
    assert 'taking over' not in result.stdout and not (tmp_path / 'split' / 'train.lock').exists()
    # the same losses, to the last bit, and the same final weights, dropout and all
    assert train_losses(tmp_path / 'straight') == train_losses(tmp_path / 'split')
    straight = torch.load(tmp_path / 'straight' / 'ckpt.pt', weights_only=True)
    split = torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)
    assert straight['iter_num'] == split['iter_num'] == 20
    for name, tensor in straight['model'].items():
        assert torch.equal(tensor, split['model'][name]), name


def test_a_refused_resume_leaves_the_out_dir_as_it_was(run, trained):
    # refused after train.py took out_dir's lock: the lock goes, the checkpoint and the record stay
    before = {name: (trained / name).read_bytes() for name in ('ckpt.pt', 'metrics.jsonl')}
    result = run('train.py', '--dataset=tiny', '--init_from=resume', '--n_layer=3', '--device=cpu', expect=2)
    assert_one_line_error(result, 'cannot resume with n_layer=3: the checkpoint in out has n_layer=2')
    assert {name: (trained / name).read_bytes() for name in before} == before
    assert not (trained / 'train.lock').exists()


def start_training(tmp_path, *args):
    return subprocess.Popen([sys.executable, str(REPO / 'train.py'), *RUN, '--max_iters=100000', *args],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())


def wait_for(stream, text):
    for line in stream:
        if text in line:
            return line
    raise AssertionError(f"never saw {text!r}")


def test_ctrl_c_saves_and_resume_continues(run, tmp_path, char_data):
    proc = start_training(tmp_path, '--always_save_checkpoint=False', '--eval_interval=1000')
    wait_for(proc.stdout, 'iter 20/')
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert 'stopping after this step' in err
    stop_line = [line for line in out.splitlines() if line.startswith('stopped at iteration')][0]
    stopped_at = int(stop_line.split()[3].rstrip(';'))
    assert 'saved out/last.pt' in stop_line and '--init_from=resume' in stop_line
    assert torch.load(tmp_path / 'out' / 'last.pt', weights_only=True)['iter_num'] == stopped_at
    # resume picks the stopped state (further along than ckpt.pt) and clears it once past it
    result = run('train.py', *RUN, '--init_from=resume', f'--max_iters={stopped_at + 5}', '--eval_interval=1000')
    assert f'resuming from out/last.pt at iteration {stopped_at}' in result.stdout
    assert not (tmp_path / 'out' / 'last.pt').exists()
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == stopped_at + 5


def test_second_ctrl_c_aborts_at_once(tmp_path, char_data):
    # steps of a few hundred ms, so that the second Ctrl-C lands inside the step the first one waits for
    proc = start_training(tmp_path, '--n_layer=4', '--n_embd=256', '--block_size=128', '--batch_size=32',
                          '--eval_interval=1000')
    wait_for(proc.stdout, 'iter 1/')
    proc.send_signal(signal.SIGINT)
    wait_for(proc.stderr, 'stopping after this step')
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'second Ctrl-C' in err
    assert not (tmp_path / 'out' / 'last.pt').exists()


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path):
    # a real SIGKILL in the middle of writing: the torch.save underneath writes part of the file, then dies
    script = f"""
import os, signal, sys, torch
sys.path.insert(0, {str(REPO)!r})
from nanogpt import checkpoints
checkpoints.save_checkpoint({{'model': {{}}, 'model_args': {{}}, 'iter_num': 1}}, 'ckpt.pt')
def dying_save(obj, f):
    f.write(b'the first bytes of a checkpoint')
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoints.save_checkpoint({{'model': {{}}, 'model_args': {{}}, 'iter_num': 2}}, 'ckpt.pt')
"""
    result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL
    assert (tmp_path / 'ckpt.pt.tmp').exists()  # the half-written file is beside, not in place of, the good one
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['iter_num'] == 1


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(run, trained):
    before = (trained / 'ckpt.pt').read_bytes()
    result = run('train.py', '--dataset=tiny', '--init_from=resume', '--max_iters=60', '--device=cpu',
                 '--batch_size=4', '--gradient_accumulation_steps=1', '--learning_rate=1e30', '--decay_lr=False',
                 '--grad_clip=0.0', '--eval_interval=1000', '--always_save_checkpoint=True', expect=1)
    message = result.stderr.strip().splitlines()[-1]
    assert 'the loss became non-finite at iteration ' in message
    assert 'Last good checkpoint: out/ckpt.pt (iteration 30)' in message
    assert (trained / 'ckpt.pt').read_bytes() == before


def test_ctrl_c_during_a_long_evaluation_stops_within_a_batch(tmp_path, char_data):
    proc = start_training(tmp_path, '--eval_iters=100000', '--always_save_checkpoint=False')
    wait_for(proc.stdout, 'tokens per iteration')  # the start-up block: the first evaluation begins now
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'step 0:' not in out  # the evaluation was cut short, not reported
    assert torch.load(tmp_path / 'out' / 'last.pt', weights_only=True)['iter_num'] == 0


def file_size_limit(limit):
    """For subprocess's preexec_fn: writing a file past limit bytes fails as on a full disk (EFBIG;
    Python ignores the SIGXFSZ that would otherwise kill the process)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


# above metrics.jsonl and its rewrite on resume (a few KB), well below a checkpoint (over 100 KB)
FILE_SIZE_LIMIT = 32_000
FULL_DISK_RESUME = ['train.py', '--dataset=tiny', *TINY_MODEL, '--init_from=resume', '--max_iters=40',
                    '--eval_interval=10', '--always_save_checkpoint=True']
FULL_DISK_LINE = ("train.py: could not write out/ckpt.pt (File too large); the previous checkpoint out/ckpt.pt is "
                  "intact (iteration 30): free some space and resume with --init_from=resume")


def test_full_disk_keeps_the_checkpoint_and_stops_cleanly(run, trained):
    assert (trained / 'ckpt.pt').stat().st_size > 3 * FILE_SIZE_LIMIT
    result = run(*FULL_DISK_RESUME, expect=1, preexec_fn=file_size_limit(FILE_SIZE_LIMIT))
    assert result.stderr.strip().splitlines() == [FULL_DISK_LINE]
    assert not (trained / 'ckpt.pt.tmp').exists()
    assert torch.load(trained / 'ckpt.pt', weights_only=True)['iter_num'] == 30
    assert 'step 40: ' in result.stdout and 'done:' not in result.stdout
    # metrics.jsonl is whole: its last event is the evaluation whose checkpoint could not be written
    last = read_metrics(trained)[-1]
    assert (last['event'], last['iter'], last['saved']) == ('eval', 40, False)


def test_full_disk_under_torchrun_stops_every_rank(trained):
    result = run_torchrun(REPO / FULL_DISK_RESUME[0], *FULL_DISK_RESUME[1:], '--gradient_accumulation_steps=2',
                          cwd=trained.parent, timeout=120, preexec_fn=file_size_limit(FILE_SIZE_LIMIT))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count(FULL_DISK_LINE) == 1  # rank 0 says it, once
    assert 'train.py", line' not in result.stderr  # no traceback of ours (torchrun prints its own)
    # torchrun's report of each worker. Once one has exited with an error it sends SIGTERM to the
    # rest, and a rank a few milliseconds behind may get it while it shuts down: it then reads -15
    # (torch 2.9 leaves the workers it stopped out of the report; its "closing signal" line names them).
    # (With rank 0's failure not shared, rank 1 trained on into a gloo traceback, "Connection closed
    # by peer", and the run hung past the timeout.)
    reported = {pid: code for code, pid in re.findall(r'exitcode\s+:\s+(-?\d+) \(pid: (\d+)\)', result.stderr)}
    stopped = set(re.findall(r'Sending process (\d+) closing signal SIGTERM', result.stderr))
    assert '1' in reported.values() and set(reported.values()) <= {'1', str(-signal.SIGTERM)}, result.stderr[-3000:]
    assert len(set(reported) | stopped) == 2, result.stderr[-3000:]  # both workers: each failed or was stopped
    assert not (trained / 'ckpt.pt.tmp').exists()
    assert torch.load(trained / 'ckpt.pt', weights_only=True)['iter_num'] == 30


def test_second_run_into_a_busy_out_dir_is_refused_and_sigterm_saves(run, tmp_path, char_data):
    first = start_training(tmp_path, '--always_save_checkpoint=True', '--eval_interval=1000')
    try:
        wait_for(first.stdout, 'iter 5/')
        lock = json.loads((tmp_path / 'out' / 'train.lock').read_text())
        assert (lock['pid'], lock['host']) == (first.pid, socket.gethostname())
        # even a run that only reads out_dir's checkpoint: evaluating it, the first run could replace it
        result = run('train.py', *RUN, '--max_iters=5', '--init_from=resume', '--eval_only=True', expect=2)
        assert_one_line_error(result, f"out_dir out is in use by another run (pid {first.pid} on host "
                                      f"{socket.gethostname()}, started {lock['started']})", 'delete out/train.lock')
        assert 1 in train_losses(tmp_path / 'out')  # the first run's record was not started anew
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=60)
    # SIGTERM (a scheduler's stop) with always_save_checkpoint: the latest state in ckpt.pt
    assert first.returncode == 128 + signal.SIGTERM and 'saved out/ckpt.pt' in out
    assert not (tmp_path / 'out' / 'train.lock').exists()


@pytest.fixture
def exit_handlers(monkeypatch):
    """What lock_out_dir leaves for the interpreter's exit, kept here instead: a test calls them to exit."""
    handlers = []
    monkeypatch.setattr(atexit, 'register', lambda function, *args: handlers.append(lambda: function(*args)))
    return handlers


def write_lock(out_dir, pid, host):
    out_dir.mkdir()
    (out_dir / out_dirs.LOCK_NAME).write_text(json.dumps({'pid': pid, 'host': host, 'started': '2026-01-02 03:04:05'}))


def test_a_dead_runs_lock_is_taken_over(tmp_path, monkeypatch, capsys, exit_handlers):
    dead_pid = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                              capture_output=True, text=True, check=True).stdout.strip()  # run() waited: it is gone
    monkeypatch.chdir(tmp_path)
    write_lock(tmp_path / 'out', int(dead_pid), socket.gethostname())
    lock = tmp_path / 'out' / 'train.lock'
    assert out_dirs.lock_out_dir('out') == 'out/train.lock'
    assert (f"taking over out/train.lock: the run that left it (pid {dead_pid}, started 2026-01-02 03:04:05) is gone"
            in capsys.readouterr().out)
    assert json.loads(lock.read_text())['pid'] == os.getpid()
    for handler in exit_handlers:  # this run exits
        handler()
    assert not lock.exists()


def test_a_live_runs_lock_and_one_from_another_host_are_refused(refused, tmp_path, monkeypatch, exit_handlers):
    monkeypatch.chdir(tmp_path)
    write_lock(tmp_path / 'here', os.getppid(), socket.gethostname())  # the process that started this one
    with refused(f"out_dir here is in use by another run (pid {os.getppid()} on host {socket.gethostname()}, "
                 f"started 2026-01-02 03:04:05)", "or delete here/train.lock if that run is gone"):
        out_dirs.lock_out_dir('here')
    write_lock(tmp_path / 'out', 1234, 'elsewhere')  # whether pid 1234 is alive there cannot be seen from here
    with refused("(pid 1234 on host elsewhere, started 2026-01-02 03:04:05)",
                 "or delete out/train.lock if that run is gone"):
        out_dirs.lock_out_dir('out')
    assert (tmp_path / 'out' / 'train.lock').exists() and not exit_handlers
