"""train.py run as a user would: tiny data, a tiny model, a few dozen iterations on the CPU."""
import math

import torch

from conftest import TINY_MODEL, assert_one_line_error
from nanogpt.report import read_metrics


def test_train_learns_and_writes_an_original_style_checkpoint(trained):
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    assert {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'} <= checkpoint.keys()
    assert checkpoint['model_args'] == dict(n_layer=2, n_head=2, n_embd=16, block_size=16, bias=False,
                                            vocab_size=checkpoint['meta']['vocab_size'], dropout=0.0)
    assert checkpoint['config']['dataset'] == 'tiny' and checkpoint['iter_num'] == 30
    evals = [e for e in read_metrics(trained) if e['event'] == 'eval']
    assert [e['iter'] for e in evals] == [0, 10, 20, 30]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.5  # it learned something
    assert checkpoint['best_val_loss'] == min(e['val_loss'] for e in evals)


def test_exactly_max_iters_optimizer_steps(trained):
    steps = [e['iter'] for e in read_metrics(trained) if e['event'] == 'train']
    assert steps == list(range(1, 31))  # log_interval=1: one line per optimizer step, no more


def test_log_line_has_iter_loss_lr_speed(run, char_data):
    out = run('train.py', '--dataset=tiny', '--max_iters=4', '--eval_interval=100', *TINY_MODEL).stdout
    line = [l for l in out.splitlines() if l.startswith('iter 4/4')][0]
    for field in ('loss ', 'lr ', 'ms/iter', 'tok/s', 'mfu ', 'eta'):  # mfu: against this CPU's measured peak
        assert field in line


def test_lr_schedule_warmup_then_cosine_to_min_lr(run, tmp_path, char_data):
    run('train.py', '--dataset=tiny', '--max_iters=12', '--eval_interval=100', '--log_interval=1', *TINY_MODEL,
        '--learning_rate=1.0', '--min_lr=0.1', '--warmup_iters=3', '--lr_decay_iters=9')
    lrs = [e['lr'] for e in read_metrics(tmp_path / 'out') if e['event'] == 'train']
    # warmup: lr * (it + 1) / (warmup + 1); cosine from it=3 to it=9; min_lr after
    cosine = [0.1 + 0.45 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]
    expected = [0.25, 0.5, 0.75] + cosine + [0.1, 0.1]
    assert len(lrs) == 12
    for got, want in zip(lrs, expected):
        assert abs(got - want) < 1e-9


def test_constant_lr_without_decay(run, tmp_path, char_data):
    run('train.py', '--dataset=tiny', '--max_iters=3', '--eval_interval=100', *TINY_MODEL, '--decay_lr=False')
    assert {e['lr'] for e in read_metrics(tmp_path / 'out') if e['event'] == 'train'} == {3e-3}


def test_resume_continues_from_the_checkpoint(run, trained, tmp_path):
    result = run('train.py', '--dataset=tiny', '--init_from=resume', '--max_iters=40', '--eval_interval=10',
                 '--log_interval=1', '--device=cpu')  # the model shape comes from the checkpoint
    assert 'resuming from out/ckpt.pt at iteration 30' in result.stdout
    assert torch.load(trained / 'ckpt.pt', weights_only=True)['iter_num'] in (30, 40)
    steps = [e['iter'] for e in read_metrics(trained) if e['event'] == 'train']
    assert steps == list(range(1, 41))  # metrics.jsonl carries on where it was


def test_best_val_loss_only_goes_down(run, tmp_path, char_data):
    # a learning rate this high makes val loss climb; always_save_checkpoint must not record the climb as best
    run('train.py', '--dataset=tiny', '--max_iters=30', '--eval_interval=5', *TINY_MODEL,
        '--always_save_checkpoint=True', '--learning_rate=0.5', '--decay_lr=False', '--grad_clip=0.0')
    evals = [e['val_loss'] for e in read_metrics(tmp_path / 'out') if e['event'] == 'eval']
    checkpoint = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
    assert checkpoint['iter_num'] == 30  # always_save: the latest state
    assert checkpoint['best_val_loss'] == min(evals)


def test_eval_only_writes_nothing(run, tmp_path, char_data):
    out = run('train.py', '--dataset=tiny', '--eval_only=True', *TINY_MODEL).stdout
    assert 'step 0: train loss' in out and not (tmp_path / 'out' / 'ckpt.pt').exists()


def test_vocab_size_comes_from_meta_pkl(trained):
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    assert checkpoint['model_args']['vocab_size'] == len(checkpoint['meta']['stoi']) < 100


def test_wandb_offline_logs_derived_values_and_resumes_the_same_run(run, tmp_path, char_data):
    args = ['--dataset=tiny', *TINY_MODEL, '--eval_interval=3', '--wandb_log=True', '--wandb_project=test',
            '--always_save_checkpoint=True']
    env = {'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path)}
    run('train.py', *args, '--max_iters=3', env=env)
    run_id = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['wandb_run_id']
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    logged = (runs[0] / f'run-{run_id}.wandb').read_bytes()
    for derived in (b'tokens_per_iter', b'n_params', b'world_size', b'device'):
        assert derived in logged
    run('train.py', *args, '--max_iters=6', '--init_from=resume', env=env)
    assert sorted(r.name.endswith(run_id) for r in (tmp_path / 'wandb').glob('offline-run-*')) == [True, True]


def test_impossible_device_is_a_clear_error(run, char_data):
    if torch.cuda.is_available():
        return
    assert_one_line_error(run('train.py', '--dataset=tiny', *TINY_MODEL, '--device=cuda', expect=None), 'no CUDA')


def test_missing_dataset_says_which_prepare_to_run(run, tmp_path):
    result = run('train.py', '--dataset=shakespeare_char', '--device=cpu', expect=None, cwd=tmp_path)
    assert_one_line_error(result, 'data/shakespeare_char does not exist')
