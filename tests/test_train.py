"""train.py run as a user would: tiny data, a tiny model, a few dozen iterations on the CPU; and what
it checks and computes, called as it calls it."""
import math
import shutil

import pytest
import torch

from conftest import TINY_MODEL, made_once, run_script
from nanogpt import settings
from nanogpt.optimizers import learning_rate_at
from nanogpt.report import read_metrics


def wandb_offline(folder):
    return {'WANDB_MODE': 'offline', 'WANDB_DIR': str(folder)}


@pytest.fixture(scope='session')  # not module: a worker that ran another module's test in between would run it again
def high_lr_run(tmp_path_factory, prepared_data):
    """(folder, stdout) of one train.py run: 30 iterations at a learning rate high enough for val loss to
    climb, evaluated and checkpointed every 5, logged to wandb offline."""
    def train(folder):
        shutil.copytree(prepared_data, folder / 'data' / 'tiny')
        result = run_script('train.py', '--dataset=tiny', *TINY_MODEL, '--max_iters=30', '--eval_interval=5',
                             '--always_save_checkpoint=True', '--learning_rate=0.5', '--decay_lr=False',
                             '--grad_clip=0.0', '--wandb_log=True', '--wandb_project=test', cwd=folder,
                             env=wandb_offline(folder))
        (folder / 'stdout.txt').write_text(result.stdout)
    folder = made_once(tmp_path_factory, 'high_lr', train)
    return folder, (folder / 'stdout.txt').read_text()


@pytest.fixture(scope='session')
def resumed_run(tmp_path_factory, high_lr_run):
    """(folder, stdout): a copy of high_lr_run's folder, resumed to 40 iterations; the model's shape
    comes from the checkpoint, the learning rate from train.py's defaults."""
    def resume(folder):
        shutil.copytree(high_lr_run[0], folder, dirs_exist_ok=True)
        result = run_script('train.py', '--dataset=tiny', '--init_from=resume', '--max_iters=40', '--eval_interval=10',
                             '--batch_size=4', '--gradient_accumulation_steps=1', '--eval_iters=2', '--device=cpu',
                             '--compile=False', '--onednn=False', '--wandb_log=True', '--wandb_project=test',
                             cwd=folder, env=wandb_offline(folder))
        (folder / 'stdout.txt').write_text(result.stdout)
    folder = made_once(tmp_path_factory, 'resumed', resume)
    return folder, (folder / 'stdout.txt').read_text()


def logged_lrs(out_dir):
    """{iteration: the learning rate of the step that reached it}."""
    return {e['iter']: e['lr'] for e in read_metrics(out_dir) if e['event'] == 'train'}


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


def test_log_line_has_iter_loss_lr_speed(high_lr_run):
    line = [l for l in high_lr_run[1].splitlines() if l.startswith('iter 30/30')][0]
    for field in ('loss ', 'lr ', 'ms/iter', 'tok/s', 'mfu ', 'eta'):  # mfu: against this CPU's measured peak
        assert field in line


def test_lr_schedule_warmup_then_cosine_to_min_lr(trained):
    lrs = [learning_rate_at(it, 1.0, 0.1, warmup_iters=3, lr_decay_iters=9) for it in range(12)]
    # warmup: lr * (it + 1) / (warmup + 1); cosine from it=3 to it=9; min_lr after
    cosine = [0.1 + 0.45 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]
    expected = [0.25, 0.5, 0.75] + cosine + [0.1, 0.1]
    for got, want in zip(lrs, expected, strict=True):
        assert abs(got - want) < 1e-9
    # train.py follows it: the trained fixture's settings (TINY_MODEL's, train.py's defaults)
    for it, lr in logged_lrs(trained).items():
        assert lr == learning_rate_at(it - 1, 3e-3, 6e-5, warmup_iters=2, lr_decay_iters=600000)


def test_constant_lr_without_decay(high_lr_run):
    assert {learning_rate_at(it, 3e-3, 6e-5, 2, 9, decay_lr=False) for it in (0, 1, 5, 9, 100)} == {3e-3}
    assert set(logged_lrs(high_lr_run[0] / 'out').values()) == {0.5}  # train.py --decay_lr=False


def test_resume_continues_from_the_checkpoint(resumed_run):
    folder, stdout = resumed_run
    assert 'resuming from out/ckpt.pt at iteration 30' in stdout
    assert torch.load(folder / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 40
    events = read_metrics(folder / 'out')
    steps = [e['iter'] for e in events if e['event'] == 'train']
    assert steps == list(range(1, 41))  # metrics.jsonl carries on where it was
    done = [e['iter'] for e in events if e['event'] == 'done']
    assert done == [40]  # the resumed run's end only, not also the first run's, at 30
    # train.py's defaults from here: learning_rate 6e-4, warming up over 2000 iterations
    assert all(lr == learning_rate_at(it - 1, 6e-4, 6e-5, 2000, 600000)
               for it, lr in logged_lrs(folder / 'out').items() if it > 30)


def test_best_val_loss_only_goes_down(high_lr_run):
    # always_save_checkpoint must not record a val loss that climbed as the best
    out_dir = high_lr_run[0] / 'out'
    evals = [e['val_loss'] for e in read_metrics(out_dir) if e['event'] == 'eval']
    checkpoint = torch.load(out_dir / 'ckpt.pt', weights_only=True)
    assert checkpoint['iter_num'] == 30  # always_save: the latest state
    assert checkpoint['best_val_loss'] == min(evals)


def test_eval_only_writes_nothing(run, tmp_path, char_data):
    out = run('train.py', '--dataset=tiny', '--eval_only=True', *TINY_MODEL).stdout
    assert 'step 0: train loss' in out and not (tmp_path / 'out' / 'ckpt.pt').exists()


def test_vocab_size_comes_from_meta_pkl(trained):
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    assert checkpoint['model_args']['vocab_size'] == len(checkpoint['meta']['stoi']) < 100


def test_wandb_offline_logs_derived_values_and_resumes_the_same_run(high_lr_run, resumed_run):
    first = high_lr_run[0]
    run_id = torch.load(first / 'out' / 'ckpt.pt', weights_only=True)['wandb_run_id']
    runs = list((first / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    logged = (runs[0] / f'run-{run_id}.wandb').read_bytes()
    for derived in (b'tokens_per_iter', b'n_params', b'world_size', b'device'):
        assert derived in logged
    resumed = resumed_run[0]
    assert torch.load(resumed / 'out' / 'ckpt.pt', weights_only=True)['wandb_run_id'] == run_id
    assert sorted(r.name.endswith(run_id) for r in (resumed / 'wandb').glob('offline-run-*')) == [True, True]


# train.py's defaults, as far as its settings checks read them
DEFAULTS = dict(batch_size=12, block_size=1024, gradient_accumulation_steps=40, eval_interval=2000, eval_iters=200,
                log_interval=1, max_iters=600000, learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000,
                hellaswag_interval=0, fsdp=False, dist_timeout=600)


def test_training_settings_are_checked_up_front(refused):
    settings.check_training(DEFAULTS)
    settings.check_training(dict(DEFAULTS, max_iters=0, warmup_iters=0, learning_rate=0.0))  # zero is fine
    with refused('--batch_size must be at least 1, not 0'):
        settings.check_training(dict(DEFAULTS, batch_size=0))
    with refused('--log_interval must be at least 1, not -5'):
        settings.check_training(dict(DEFAULTS, log_interval=-5))
    with refused('cannot be negative'):
        settings.check_training(dict(DEFAULTS, min_lr=-1e-5))
    with refused('hellaswag_interval does not run under --fsdp=True yet', 'eval.py'):
        settings.check_training(dict(DEFAULTS, fsdp=True, hellaswag_interval=100))

