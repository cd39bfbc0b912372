"""bench.py: timing, MFU against the right peak, the profiler, and one JSON line per run."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from model import GPT, GPTConfig
from nanogpt import flops
from nanogpt.cpu_linears import onednn_usable

TINY_BENCH = ['--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4', '--device=cpu',
              '--vocab_size=65', '--warmup_iters=2', '--bench_iters=5', '--results_file=results.jsonl']


def results(tmp_path):
    return [json.loads(line) for line in (tmp_path / 'results.jsonl').read_text().splitlines()]


def test_bench_training_step_reports_median_tokens_and_mfu_and_profiles(run, tmp_path):
    out = run('bench.py', *TINY_BENCH, '--profile=True').stdout
    record = results(tmp_path)[0]
    assert record['bench'] == 'train' and record['device'] == 'cpu' and record['median_ms'] > 0
    # tokens/s is rounded to a whole number, median_ms to a microsecond
    assert abs(record['tokens_per_s'] - 4 * 16 / (record['median_ms'] / 1000)) <= 0.5 + 0.01 * record['tokens_per_s']
    assert 0 < record['mfu'] < 1 and record['peak_tflops'] > 0  # against this CPU's measured matmul rate
    assert 'median' in out and 'MFU' in out
    # the profiler's table and its trace
    assert record['profiled'] is True and 'Self CPU' in out and list((tmp_path / 'bench_log').glob('*.json'))


def test_bench_reads_a_training_config_and_real_data(run, tmp_path, char_data):
    run('bench.py', 'config/train_shakespeare_char_cpu.py', '--real_data=True', '--dataset=tiny', *TINY_BENCH[:5],
        '--warmup_iters=1', '--bench_iters=2', '--results_file=results.jsonl')
    record = results(tmp_path)[0]
    assert record['model']['vocab_size'] < 100 and record['real_data'] is True  # from the dataset's meta.pkl
    assert record['batch_size'] == 4  # the command line wins over the config file


@pytest.mark.slow
def test_bench_generate_compares_kv_cache_and_times_the_compiled_step_apart(run, tmp_path):
    out = run('bench.py', *TINY_BENCH, '--mode=generate', '--max_new_tokens=40', '--repeats=1', '--compile=True').stdout
    record = results(tmp_path)[0]
    assert record['same_tokens'] is True and record['kv_cache_tokens_per_s'] > 0 and record['speedup'] > 0
    assert record['compiled_same_tokens'] is True and record['compiled_tokens_per_s'] > 0 and record['compile_s'] > 0
    assert record['compile_counts'] == dict(graphs=1, graph_breaks=0, recompiles=0)  # the logit check reuses it
    assert 'compile: 1 graphs, 0 graph breaks, 0 recompiles' in out


def test_peak_table(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H100 80GB HBM3')
    assert flops.peak_flops('cuda', 'bfloat16') == 989e12 and flops.peak_flops('cuda', 'float32') == 495e12
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA A100-SXM4-40GB')
    assert flops.peak_flops('cuda', 'bfloat16') == 312e12
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H100 PCIe')
    assert flops.peak_flops('cuda', 'float16') == 756e12
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA A10G')
    assert flops.peak_flops('cuda', 'bfloat16') is None  # not the A10's figure
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Some Future GPU')
    assert flops.peak_flops('cuda', 'bfloat16') is None
    # whole words, the longest name that matches: an L40 is no L4, an H200 NVL no H200 SXM
    assert flops.gpu_peak_tflops('NVIDIA L40') == (181, 90.5) and flops.gpu_peak_tflops('NVIDIA L4') == (121, 60)
    assert flops.gpu_peak_tflops('NVIDIA H200 NVL') == (835, 418) and flops.gpu_peak_tflops('NVIDIA H200')[0] == 989
    assert flops.gpu_peak_tflops('Tesla V100-SXM2-16GB') == (125, 15.7)


def test_cpu_peak_is_the_faster_library():
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    step_flops = model.flops_per_token() * 8 * 2
    peak = flops.peak_flops('cpu')
    assert peak == flops.measured_cpu_flops() > 1e9
    assert model.estimate_mfu(2, 1.0, peak) == step_flops / peak


def test_step_parts_splits_the_classic_and_modern_steps(run, tmp_path):
    out = run('benchmarks/step_parts.py', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
              '--batch_size=2', '--rounds=5', '--muon_ns_steps=2', '--results_file=results.jsonl').stdout
    record = results(tmp_path)[0]
    classic, modern = record['medians_ms']['classic'], record['medians_ms']['modern']
    assert record['muon_ns_steps'] == 2 and 'Muon' not in classic and modern['Muon'] > 0  # only the modern step has Muon
    for parts in (classic, modern):  # each part is inside the step, round by round, so its median is no larger
        assert 0 < parts['forward+backward'] and all(value <= parts['step'] for value in parts.values())
    assert '| forward+backward |' in out and '| step |' in out and '| step, round by round |' in out
    assert record['step_ratio_per_round'] > 0


@pytest.mark.skipif(not onednn_usable('cpu', 'float32'), reason="oneDNN linears need an x86-64 CPU and oneDNN")
def test_step_parts_sets_onednn_linears_beside_plain_ones(run, tmp_path):
    out = run('benchmarks/step_parts.py', '--versus=onednn', '--n_layer=1', '--n_head=2', '--n_embd=16',
              '--block_size=16', '--batch_size=2', '--rounds=5', '--results_file=results.jsonl').stdout
    record = results(tmp_path)[0]
    assert record['versus'] == 'onednn' and set(record['medians_ms']) == {'plain', 'oneDNN'}
    assert all('Muon' not in parts for parts in record['medians_ms'].values())
    assert '| part | plain ms | oneDNN ms | oneDNN / plain |' in out and '| Muon |' not in out


def test_suite_cpu_counts_the_processes_a_test_waits_for(tmp_path):
    # a test that keeps a process of its own busy for 0.3 s of CPU, and one that only waits
    (tmp_path / 'test_busy.py').write_text(
        "import subprocess, sys, time\n"
        "def test_busy():\n"
        "    subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.3: pass'], check=True)\n"
        "def test_idle():\n"
        "    time.sleep(0.3)\n")
    result = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'benchmarks.suite_cpu', '-p', 'no:cacheprovider',
                             'test_busy.py'], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith('PYTEST_')},  # not a worker
                                 'PYTHONPATH': str(REPO), 'SUITE_CPU_FILE': str(tmp_path / 'cpu.jsonl')})
    assert result.returncode == 0, result.stdout[-2000:]
    rows = {row['test']: row for row in map(json.loads, (tmp_path / 'cpu.jsonl').read_text().splitlines())}
    assert rows['test_busy.py::test_busy']['cpu_s'] >= 0.3
    assert rows['test_busy.py::test_idle']['cpu_s'] < 0.2 <= rows['test_busy.py::test_idle']['wall_s']
    assert 'suite_cpu: ' in result.stdout and 'CPU s and ' in result.stdout
