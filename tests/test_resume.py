"""Never lose a run: exact resume, atomic checkpoints, clean stops on signals, non-finite loss."""
import signal
import subprocess
import sys

import torch

from conftest import REPO, TINY_MODEL, _env, train_losses

RUN = ['--dataset=tiny', *TINY_MODEL, '--dropout=0.1', '--eval_interval=10', '--log_interval=1']


def test_resume_is_exact(run, tmp_path, char_data):
    run('train.py', *RUN, '--out_dir=straight', '--max_iters=20', '--always_save_checkpoint=True')
    run('train.py', *RUN, '--out_dir=split', '--max_iters=10', '--always_save_checkpoint=True')
    result = run('train.py', *RUN, '--out_dir=split', '--max_iters=20', '--always_save_checkpoint=True',
                 '--init_from=resume', '--learning_rate=3e-3')
    assert 'settings changed since the checkpoint: max_iters 10 -> 20' in result.stdout
    # the same losses, to the last bit, and the same final weights, dropout and all
    assert train_losses(tmp_path / 'straight') == train_losses(tmp_path / 'split')
    straight = torch.load(tmp_path / 'straight' / 'ckpt.pt', weights_only=True)
    split = torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)
    assert straight['iter_num'] == split['iter_num'] == 20
    for name, tensor in straight['model'].items():
        assert torch.equal(tensor, split['model'][name]), name


def test_resume_with_changed_shape_is_an_error(run, trained):
    result = run('train.py', '--dataset=tiny', '--init_from=resume', '--n_layer=3', '--device=cpu', expect=2)
    assert 'cannot resume with n_layer=3: the checkpoint in out has n_layer=2' in result.stderr


def start_training(tmp_path, *args):
    return subprocess.Popen([sys.executable, str(REPO / 'train.py'), *RUN, '--max_iters=100000', *args],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


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


def test_sigterm_with_always_save_writes_ckpt(tmp_path, char_data):
    proc = start_training(tmp_path, '--always_save_checkpoint=True', '--eval_interval=1000')
    wait_for(proc.stdout, 'iter 10/')
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and 'saved out/ckpt.pt' in out


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
import checkpoints
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
                 '--learning_rate=1e30', '--decay_lr=False', '--grad_clip=0.0', '--eval_interval=1000',
                 '--always_save_checkpoint=True', expect=1)
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
