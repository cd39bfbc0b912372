"""DDP with torchrun on the CPU (gloo): one machine, and two "machines" on loopback."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_MODEL, made_once, run_torchrun, script_env
from nanogpt import settings

DDP_RUN = ['--dataset=tiny', '--out_dir=out', '--max_iters=30', '--eval_interval=15', '--log_interval=5',
           *TINY_MODEL, '--gradient_accumulation_steps=2']
# with dropout, each rank's own random state must be saved and restored for a resume to be exact
EXACT_RUN = [*DDP_RUN, '--dropout=0.1', '--always_save_checkpoint=True', '--eval_interval=10']


def torchrun(tmp_path, *args):
    return [sys.executable, '-m', 'torch.distributed.run', *args, str(REPO / 'train.py')]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')  # not module: the slow tests go first (conftest), away from this module's others
def ddp_run(tmp_path_factory, prepared_data):
    """(folder, stdout): train.py under torchrun, 2 processes for 30 iterations (made once per run), each
    rank's output also in folder/logs."""
    def train(folder):
        shutil.copytree(prepared_data, folder / 'data' / 'tiny')
        result = run_torchrun(REPO / 'train.py', *EXACT_RUN, cwd=folder, options=[
            '--standalone', '--nproc_per_node=2', f'--log-dir={folder / "logs"}', '--redirects=3', '--tee=3'])
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / 'stdout.txt').write_text(result.stdout)
    folder = made_once(tmp_path_factory, 'ddp', train)
    return folder, (folder / 'stdout.txt').read_text()


def test_two_processes_on_one_machine(ddp_run):
    folder, stdout = ddp_run
    assert 'weights identical on all 2 ranks' in stdout
    assert '2 processes (DDP, gloo)' in stdout  # gloo chosen for the CPU
    # rank 0 alone logs and writes the checkpoint; rank 1 trains silently (torch 2.9's gloo says on
    # each rank that it connected: its line, not ours)
    rank_logs = {path.parent.name: path.read_text() for path in (folder / 'logs').rglob('stdout.log')}
    assert 'saved out/ckpt.pt' in rank_logs['0']
    assert [line for line in rank_logs['1'].splitlines() if not line.startswith('[Gloo] ')] == []
    assert sorted(p.name for p in (folder / 'out').iterdir()) == ['ckpt.pt', 'metrics.jsonl']
    evals = [json.loads(l) for l in (folder / 'out' / 'metrics.jsonl').read_text().splitlines()
             if '"eval"' in l]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.3  # loss goes down
    assert '128 tokens per iteration' in stdout  # 4 x 16 x (1 micro-step x 2 ranks)


def test_accumulation_steps_must_divide_by_world_size(refused, monkeypatch, capsys):
    settings.check_world_size(40, 8, fsdp=False)  # 5 micro-steps each
    monkeypatch.setenv('RANK', '0')
    with refused('gradient_accumulation_steps (3) must be divisible by the number of DDP processes (2)'):
        settings.check_world_size(3, 2, fsdp=False)
    monkeypatch.setenv('RANK', '1')  # every rank finds the mistake and stops; rank 0 alone says it
    with pytest.raises(SystemExit) as stop:
        settings.check_world_size(3, 2, fsdp=False)
    assert stop.value.code == 2 and capsys.readouterr().err == ''


def test_ctrl_c_under_torchrun_saves_the_latest_state(tmp_path, char_data):
    # a terminal's Ctrl-C reaches torchrun and every worker: the process group gets SIGINT
    proc = subprocess.Popen(torchrun(tmp_path, '--standalone', '--nproc_per_node=2') + DDP_RUN
                            + ['--max_iters=100000', '--eval_interval=100000', '--always_save_checkpoint=False'],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(),
                            start_new_session=True)
    for line in proc.stdout:
        if 'iter 50/' in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    stopped_at = int(out.split('stopped at iteration ')[1].split(';')[0])
    assert torch.load(tmp_path / 'out' / 'last.pt', weights_only=True)['iter_num'] == stopped_at >= 50


@pytest.mark.slow
def test_two_nodes_on_loopback_then_a_resume_under_ddp_is_exact(tmp_path, char_data, ddp_run):
    # the first 10 iterations on two "machines" of a process each, on loopback
    port = free_port()
    nodes = [subprocess.Popen(torchrun(tmp_path, '--nnodes=2', f'--node_rank={rank}', '--nproc_per_node=1',
                                       '--master_addr=127.0.0.1', f'--master_port={port}')
                              + EXACT_RUN + ['--out_dir=split', '--max_iters=10'],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert 'weights identical on all 2 ranks' in outputs[0][0]
    assert torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)['iter_num'] == 10
    # resumed on one machine, on to DDP_RUN's 30, as ddp_run went straight
    result = run_torchrun(REPO / 'train.py', *EXACT_RUN, '--out_dir=split', '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    straight = torch.load(ddp_run[0] / 'out' / 'ckpt.pt', weights_only=True)['model']
    split = torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)['model']
    assert all(torch.equal(straight[k], split[k]) for k in straight)
