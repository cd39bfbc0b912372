"""The GPU path, as far as a CPU can show it: a training step that never waits for the device,
a NaN that stops every rank, dtype choices and resumes across them, the right GPU, and the one
command that checks it all on a real GPU (run here with tiny shapes)."""
import json
import subprocess
import sys
import time
import types

import pytest
import torch

from nanogpt import runtime
from conftest import REPO, TINY_MODEL, load_script, script_env, run_torchrun

COUNT_SYNCS = str(REPO / 'benchmarks' / 'count_syncs.py')


def test_the_training_step_never_waits_for_the_device(run, char_data):
    # between log lines (every 5 iterations) and evaluations the step reads nothing back to the host
    # (float16 with a GradScaler and Muon: gpu_check's second case, in its test below)
    result = run('benchmarks/count_syncs.py', str(REPO / 'train.py'), '--dataset=tiny', *TINY_MODEL,
                 '--max_iters=20', '--log_interval=5', '--eval_interval=10')
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith('host syncs: 0 inside the training step'), summary
    assert int(summary.split(', ')[1].split()[0]) > 0  # the log lines and evaluations do read values
    assert result.stdout.count('iter ') == 4  # 5, 10, 15, 20


def test_a_sync_inside_the_step_is_caught(run, tmp_path, char_data):
    # the counter itself: train.py with the original's per-iteration loss.item() put back into the step
    source = (REPO / 'train.py').read_text()
    marker = '    loss_finite &= torch.isfinite(loss.detach())'
    assert marker in source
    (tmp_path / 'train_syncing.py').write_text(source.replace(marker, marker + '\n    loss.item()'))
    result = run(COUNT_SYNCS, str(tmp_path / 'train_syncing.py'), '--dataset=tiny', *TINY_MODEL, '--max_iters=6',
                 '--log_interval=3', env={'PYTHONPATH': str(REPO)}, expect=1)
    assert 'host syncs: 6 inside the training step (item 6' in result.stderr


NAN_ON_RANK_1 = '''
import os, runpy, sys
import model
forward, steps = model.GPT.forward, [0]

def poisoned(self, idx, targets=None, kv_caches=None):
    logits, loss = forward(self, idx, targets, kv_caches)
    if self.training and os.environ['RANK'] == '1':
        steps[0] += 1
        if steps[0] == 13:  # iteration 13: one rank's loss alone turns NaN
            loss = loss * float('nan')
    return logits, loss

model.GPT.forward = poisoned
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name='__main__')
'''


def test_a_nan_on_one_rank_stops_every_rank(tmp_path, char_data):
    (tmp_path / 'nan_on_rank_1.py').write_text(NAN_ON_RANK_1.format(train=str(REPO / 'train.py')))
    result = run_torchrun(tmp_path / 'nan_on_rank_1.py', '--dataset=tiny', '--out_dir=out', *TINY_MODEL,
                          '--max_iters=40', '--eval_interval=10', '--log_interval=5', '--gradient_accumulation_steps=2',
                          '--always_save_checkpoint=True', cwd=tmp_path, env={'PYTHONPATH': str(REPO)})
    assert result.returncode != 0
    assert result.stderr.count('the loss became non-finite between iterations 11 and 15') == 1  # said by rank 0
    assert 'Last good checkpoint: out/ckpt.pt (iteration 10)' in result.stderr
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 10  # nothing NaN was saved
    assert 'iter 15' not in result.stdout


def test_auto_dtype_skips_emulated_bfloat16(monkeypatch):
    # a V100 or T4 "supports" bfloat16 only by emulation: float16 with a GradScaler is the fast choice there
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    assert runtime.resolve_dtype('auto', 'cuda') == 'float16'
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    assert runtime.resolve_dtype('auto', 'cuda') == 'bfloat16'


def test_a_second_gpu_becomes_the_current_one(monkeypatch):
    # without torchrun too: RNG states, pinned copies and synchronize() act on "the current GPU"
    current = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', current.append)
    rt = runtime.setup_runtime('cuda:1', 'float32', False)
    assert current == ['cuda:1'] and rt.device == 'cuda:1'


@pytest.mark.slow(80)
def test_gpu_check_runs_its_steps_on_a_cpu(tmp_path, char_data):
    # the GPU check, tiny and compiled as on a GPU: every step, so the script cannot rot between GPU sessions
    (tmp_path / 'data' / 'shakespeare_char').symlink_to(tmp_path / 'data' / 'tiny')
    # the runbook's command, with the interpreter running the tests (python3 on PATH may be another)
    result = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_check.sh'), '--device=cpu', '--tiny=True',
                             '--iters=10', '--full=True', f'--out_root={tmp_path / "runs"}', '--report_dir=report'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=script_env({'PYTHON': sys.executable}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '\nenvironment: torch ' in result.stdout
    assert sorted(path.name for path in (tmp_path / 'report').iterdir()) == ['log.txt', 'results.jsonl', 'table.md']
    table = (tmp_path / 'report' / 'table.md').read_text()
    assert '| case | ms/iter | tokens/s | MFU | peak GPU GB |' in table and 'all checks passed' in table
    rows = {row['case']: row for row in map(json.loads, (tmp_path / 'report' / 'results.jsonl').read_text().splitlines())}
    # compiled under the sync counter: no sync in the step, one graph per mode, no break, no recompile after
    # warm-up (tests/test_compile.py compiles cold, as a fresh GPU machine does)
    assert 'host syncs: 0 inside the training step' in rows['bf16-compile']['note']
    assert 'compile: 2 graphs, 0 graph breaks, 1 recompiles (model)' in rows['bf16-compile']['note']
    assert rows['fp16-scaler-muon']['note'].startswith('host syncs: 0 inside the training step')  # found_inf too
    for case in ('bf16-compile', 'fp16-scaler-muon', 'fp32-tf32', 'resume fp32->fp16', 'resume fp16->bf16',
                 'torchrun stop+resume', 'bench GPT-2 shape train', 'full recipe bf16-compile',
                 'full modern recipe bf16-compile'):
        assert rows[case]['ms_per_iter'] > 0 and rows[case]['tokens_per_s'] > 0, case
    assert {'sample no cache', 'sample kv_cache', 'sample kv_cache compiled', 'bench GPT-2 shape generate'} <= set(rows)
    assert rows['full modern recipe bf16-compile']['note'] == 'val loss never reached 1.47'  # a tiny model, 10 steps
    log = (tmp_path / 'report' / 'log.txt').read_text()
    assert log.count('\n== ') == len(rows) + 1 and '[exit 0]' in log  # torchrun counts twice: stopped, resumed


def gpu_check(monkeypatch, *args):
    """benchmarks/gpu_check.py args, in this process: it works at the top level, so loading it runs it."""
    monkeypatch.setattr(sys, 'argv', [str(REPO / 'benchmarks' / 'gpu_check.py'), *args])
    monkeypatch.setattr(sys, 'path', list(sys.path))  # it puts the repo in front
    load_script('benchmarks/gpu_check.py')


@pytest.mark.parametrize('args, prepared, says', [
    (['--device=cpu', '--tiny=True'], False, 'dataset folder data/shakespeare_char does not exist; run python '),
    (['--device=cuda'], True, 'sees no CUDA device; on a CPU run --device=cpu --tiny=True'),
    (['--device=cpu', '--tiny=True', '--report_dir=/proc/no'], True, 'report_dir /proc/no is not writable'),
])
def test_gpu_check_stops_at_once_without_what_it_needs(refused, monkeypatch, tmp_path, char_data, args, prepared,
                                                       says):
    if prepared:
        (tmp_path / 'data' / 'shakespeare_char').symlink_to(tmp_path / 'data' / 'tiny')
    monkeypatch.chdir(tmp_path)
    started = time.time()
    with refused('gpu_check.py: error: ', says):
        gpu_check(monkeypatch, *args, f'--out_root={tmp_path / "runs"}')
    assert time.time() - started < 30 and not (tmp_path / 'runs').exists()  # nothing started


@pytest.mark.parametrize('free_gb, nccl, triton, says', [
    (8, True, True, 'NVIDIA H200 has 8.0 GiB free of 141.0; the check needs 16'),
    (100, True, False, 'triton is not installed'),
    (100, False, True, 'this torch has no nccl'),
    (100, True, True, None),
])
def test_gpu_check_on_a_gpu_checks_it_first_and_reports_a_failed_step(refused, monkeypatch, capsys, tmp_path, char_data,
                                                                     free_gb, nccl, triton, says):
    # this process's torch pretends to see an H200: the GPU's side of the environment check runs here
    (tmp_path / 'data' / 'shakespeare_char').symlink_to(tmp_path / 'data' / 'tiny')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H200')
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (free_gb * 2**30, 141 * 2**30))
    monkeypatch.setattr(torch.distributed, 'is_nccl_available', lambda: nccl)
    # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, 'triton', types.SimpleNamespace(__version__='3.6.0') if triton else None)
    args = ['--report_dir=report', f'--out_root={tmp_path / "runs"}']
    if says:
        with refused(says):
            gpu_check(monkeypatch, *args)
        return
    # all there: the first step starts, and fails (train.py, a process of its own, sees no GPU); the report keeps it
    with pytest.raises(SystemExit) as stop:
        gpu_check(monkeypatch, *args)
    out, err = capsys.readouterr()
    assert stop.value.code == 1
    assert 'environment: torch ' in out and 'NVIDIA H200 (100 GiB free), triton 3.6.0' in out
    assert 'FAILED: bf16-compile exited with 2' in err
    assert (tmp_path / 'report' / 'table.md').read_text().rstrip().endswith('FAILED')
    assert "train.py: error: --device=cuda" in (tmp_path / 'report' / 'log.txt').read_text()
