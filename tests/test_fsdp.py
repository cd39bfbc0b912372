"""FSDP with torchrun on the CPU (gloo): DDP's losses, exact resumes, and checkpoints in the
one-process format that DDP, FSDP and one process all resume from."""
import shutil
from types import SimpleNamespace

import pytest
import torch

from nanogpt import distributed, models, settings
from conftest import REPO, TINY_MODEL, run_torchrun, train_losses

# 2 micro-steps per rank (gradients accumulate unreduced between them), and a clip low enough to
# act on every step, so that the norm over all shards is what decides each update
RUN = ['--dataset=tiny', *TINY_MODEL, '--gradient_accumulation_steps=4', '--grad_clip=0.1',
       '--log_interval=1', '--eval_interval=10', '--always_save_checkpoint=True']


def torchrun(tmp_path, *args, script=()):
    result = run_torchrun(*script, REPO / 'train.py', *RUN, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow(55)
def test_fsdp_trains_like_ddp_resumes_exactly_and_saves_one_process_checkpoints(tmp_path, char_data, monkeypatch):
    torchrun(tmp_path, '--out_dir=ddp', '--max_iters=20')
    # FSDP: DDP's losses, and a step that never waits for the device
    fsdp = torchrun(tmp_path, '--fsdp=True', '--out_dir=fsdp', '--max_iters=20',
                    script=[str(REPO / 'benchmarks' / 'count_syncs.py')])
    assert '2 processes (FSDP, gloo)' in fsdp.stdout
    assert fsdp.stderr.count('host syncs: 0 inside the training step') == 2  # on each rank
    ddp_losses, fsdp_losses = train_losses(tmp_path / 'ddp'), train_losses(tmp_path / 'fsdp')
    assert sorted(ddp_losses) == sorted(fsdp_losses) == list(range(1, 21))
    assert max(abs(ddp_losses[i] - fsdp_losses[i]) for i in ddp_losses) < 1e-5
    assert fsdp_losses[20] < fsdp_losses[1] - 0.3  # and it learns

    # the checkpoint is a one-process one: whole tensors, the original's keys, the tied weights
    # stored once, the optimizer's state keyed by index, and that state where DDP has it
    ddp_ckpt, fsdp_ckpt = load(tmp_path / 'ddp' / 'ckpt.pt'), load(tmp_path / 'fsdp' / 'ckpt.pt')
    assert fsdp_ckpt['model'].keys() == ddp_ckpt['model'].keys()
    for name, tensor in ddp_ckpt['model'].items():
        assert torch.allclose(fsdp_ckpt['model'][name], tensor, atol=1e-5), name
    tied = fsdp_ckpt['model']['lm_head.weight'], fsdp_ckpt['model']['transformer.wte.weight']
    assert tied[0].data_ptr() == tied[1].data_ptr()
    ddp_optimizer, fsdp_optimizer = ddp_ckpt['optimizer'], fsdp_ckpt['optimizer']
    assert fsdp_optimizer['param_groups'] == ddp_optimizer['param_groups']
    assert fsdp_optimizer['state'].keys() == ddp_optimizer['state'].keys()
    for index, state in ddp_optimizer['state'].items():
        assert fsdp_optimizer['state'][index]['step'] == state['step'] == 20
        for key in ('exp_avg', 'exp_avg_sq'):
            assert torch.allclose(fsdp_optimizer['state'][index][key], state[key], rtol=1e-3, atol=1e-7), (index, key)

    # FSDP stopped at 10 and resumed: bit-identical to the run above
    torchrun(tmp_path, '--fsdp=True', '--out_dir=split', '--max_iters=10')
    torchrun(tmp_path, '--fsdp=True', '--out_dir=split', '--max_iters=20', '--init_from=resume')
    assert train_losses(tmp_path / 'split') == fsdp_losses
    split_ckpt = load(tmp_path / 'split' / 'ckpt.pt')
    for name, tensor in fsdp_ckpt['model'].items():
        assert torch.equal(split_ckpt['model'][name], tensor), name

    # DDP's checkpoint resumed under FSDP, then sampled from by one process (one process resumes
    # FSDP's checkpoints as it does DDP's: they are the same, as checked above)
    shutil.copytree(tmp_path / 'ddp', tmp_path / 'moved')
    resumed = torchrun(tmp_path, '--fsdp=True', '--out_dir=moved', '--max_iters=22', '--init_from=resume')
    assert 'resuming from moved/ckpt.pt at iteration 20' in resumed.stdout
    moved = load(tmp_path / 'moved' / 'ckpt.pt')
    assert moved['iter_num'] == 22
    assert all(state['step'] == 22 for state in moved['optimizer']['state'].values())  # AdamW went on from 20
    monkeypatch.chdir(tmp_path)
    model, meta, name = models.inference_model('resume', 'moved')  # as sample.py --out_dir=moved loads it
    assert name == 'moved/ckpt.pt (iteration 22)' and meta['vocab_size'] == model.config.vocab_size
    assert model.eval().generate(torch.zeros((1, 1), dtype=torch.long), max_new_tokens=20).shape == (1, 21)


def test_fsdp_without_torchrun_is_a_one_line_error(refused, monkeypatch):
    monkeypatch.delenv('RANK', raising=False)  # one process, as python train.py starts it
    with refused("--fsdp=True shards the model across torchrun's processes",
                 'torchrun --standalone --nproc_per_node=N'):
        distributed.check_fsdp_setting(True, 'cpu')


@pytest.mark.parametrize('device, optimizer, onednn, message', [
    ('mps', 'adamw', 'auto', '--fsdp=True does not run on MPS'),
    ('cuda', 'muon', 'auto', "--fsdp=True works with optimizer='adamw' only: muon needs whole weight matrices"),
    ('cpu', 'adamw', True, "--fsdp=True runs PyTorch's own linear layers, not oneDNN's"),
])
def test_fsdp_refuses_what_it_cannot_do(monkeypatch, refused, device, optimizer, onednn, message):
    monkeypatch.setenv('RANK', '0')  # as under torchrun
    with refused(message):
        distributed.check_fsdp_setting(True, device, optimizer, onednn)


def test_fsdp_shares_out_the_micro_steps_evenly(refused):
    settings.check_world_size(4, 2, fsdp=True)
    with refused('gradient_accumulation_steps (3) must be divisible by the number of FSDP processes (2)'):
        settings.check_world_size(3, 2, fsdp=True)


def test_fsdp_refuses_float16(capsys):
    # checked before anything is sharded ('auto' picks float16 on GPUs without bfloat16)
    with pytest.raises(SystemExit):
        distributed.shard(None, SimpleNamespace(dtype='float16'))
    assert '--fsdp=True trains in bfloat16 or float32, not float16' in capsys.readouterr().err
