"""DDP with torchrun on the CPU (gloo): one machine, and two "machines" on loopback."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_MODEL, _env, run_torchrun

DDP_RUN = ['--dataset=tiny', '--out_dir=out', '--max_iters=30', '--eval_interval=15', '--log_interval=5',
           *TINY_MODEL, '--gradient_accumulation_steps=2']


def torchrun(tmp_path, *args):
    return [sys.executable, '-m', 'torch.distributed.run', *args, str(REPO / 'train.py')]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_on_one_machine(tmp_path, char_data):
    logs = tmp_path / 'logs'
    result = run_torchrun(REPO / 'train.py', *DDP_RUN, cwd=tmp_path,
                          options=['--standalone', '--nproc_per_node=2', f'--log-dir={logs}', '--redirects=3', '--tee=3'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'weights identical on all 2 ranks' in result.stdout
    assert '2 processes (DDP, gloo)' in result.stdout  # gloo chosen for the CPU
    # rank 0 alone logs and writes the checkpoint; rank 1 trains silently
    rank_logs = {path.parent.name: path.read_text() for path in logs.rglob('stdout.log')}
    assert 'saved out/ckpt.pt' in rank_logs['0'] and rank_logs['1'].strip() == ''
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['ckpt.pt', 'metrics.jsonl']
    evals = [json.loads(l) for l in (tmp_path / 'out' / 'metrics.jsonl').read_text().splitlines()
             if '"eval"' in l]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.3  # loss goes down
    assert '128 tokens per iteration' in result.stdout  # 4 x 16 x (1 micro-step x 2 ranks)


def test_two_nodes_on_loopback(tmp_path, char_data):
    port = free_port()
    nodes = [subprocess.Popen(torchrun(tmp_path, '--nnodes=2', f'--node_rank={rank}', '--nproc_per_node=1',
                                       '--master_addr=127.0.0.1', f'--master_port={port}') + DDP_RUN,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert 'weights identical on all 2 ranks' in outputs[0][0]
    assert (tmp_path / 'out' / 'ckpt.pt').exists()


def test_accumulation_steps_must_divide_by_world_size(tmp_path, char_data):
    result = run_torchrun(REPO / 'train.py', *DDP_RUN, '--gradient_accumulation_steps=3', cwd=tmp_path)
    assert result.returncode != 0
    message = 'gradient_accumulation_steps (3) must be divisible by the number of DDP processes (2)'
    assert result.stderr.count(message) == 1  # said once, by rank 0


def test_ctrl_c_under_torchrun_saves_the_latest_state(tmp_path, char_data):
    # a terminal's Ctrl-C reaches torchrun and every worker: the process group gets SIGINT
    proc = subprocess.Popen(torchrun(tmp_path, '--standalone', '--nproc_per_node=2') + DDP_RUN
                            + ['--max_iters=100000', '--eval_interval=100000', '--always_save_checkpoint=False'],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    for line in proc.stdout:
        if 'iter 50/' in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    stopped_at = int(out.split('stopped at iteration ')[1].split(';')[0])
    assert torch.load(tmp_path / 'out' / 'last.pt', weights_only=True)['iter_num'] == stopped_at >= 50


@pytest.mark.slow
def test_resume_under_ddp_is_exact(tmp_path, char_data):
    # each rank's own random state (dropout) is saved and restored
    def torchrun_train(*args):
        result = run_torchrun(REPO / 'train.py', *DDP_RUN, '--dropout=0.1', '--always_save_checkpoint=True',
                              '--eval_interval=10', *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    torchrun_train('--out_dir=straight', '--max_iters=20')
    torchrun_train('--out_dir=split', '--max_iters=10')
    torchrun_train('--out_dir=split', '--max_iters=20', '--init_from=resume')
    straight = torch.load(tmp_path / 'straight' / 'ckpt.pt', weights_only=True)['model']
    split = torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)['model']
    assert all(torch.equal(straight[k], split[k]) for k in straight)
