"""torch.compile, run on the CPU (Inductor's C++ backend) the way a GPU runs it by default: the
training step compiles once per mode (training, evaluation), without a graph break or a recompile
later, in one process, under DDP and under FSDP; a compiled run is reproducible and resumes exactly;
and the reads the compiler itself makes while compiling are not taken for the program's syncs."""
import re

import pytest
import torch

from conftest import REPO, TINY_MODEL, read_metrics, run_torchrun

COMPILED = [arg for arg in TINY_MODEL if not arg.startswith('--compile')] + ['--compile=True']
COUNT_SYNCS = str(REPO / 'benchmarks' / 'count_syncs.py')
# several evaluations and log lines: each switch between the modes must reuse the graphs compiled first
RUN = ['--dataset=tiny', '--out_dir=out', '--max_iters=12', '--eval_interval=4', '--log_interval=2', *COMPILED]
ONCE_PER_MODE = 'compile: 2 graphs, 0 graph breaks, 1 recompiles'  # the one recompile: evaluation mode


def compile_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith('compile:'))


def weights(path):
    return torch.load(path, weights_only=True)['model']


@pytest.mark.slow(45)
def test_one_process_compiles_once_per_mode_never_waits_and_is_reproducible(run, tmp_path, char_data):
    # no cached graphs, as on a fresh GPU machine: a cold compile is when Inductor reads constants on
    # the host (the C++ builds of its kernels may come from the cache: they read nothing); two threads,
    # so that Inductor's CPU kernels split their work
    cold = {'TORCHINDUCTOR_FX_GRAPH_CACHE': '0', 'TORCHINDUCTOR_AUTOGRAD_CACHE': '0', 'OMP_NUM_THREADS': '2'}
    args = [*RUN, '--always_save_checkpoint=True']
    result = run(COUNT_SYNCS, str(REPO / 'train.py'), *args, '--out_dir=a', env=cold)
    assert compile_line(result.stdout) == f'{ONCE_PER_MODE} (model)'
    assert result.stderr.strip().splitlines()[-1].startswith('host syncs: 0 inside the training step')
    done = next(e for e in read_metrics(tmp_path / 'a') if e['event'] == 'done')
    assert (done['graphs'], done['graph_breaks'], done['recompiles']) == (2, 0, 1)
    # the same seed again (caches on), stopped at iteration 8 and resumed: the weights of the
    # uninterrupted run to the bit
    threads = {'OMP_NUM_THREADS': '2'}
    run('train.py', *args, '--out_dir=b', '--max_iters=8', env=threads)
    run('train.py', *args, '--out_dir=b', '--init_from=resume', env=threads)
    a, b = weights(tmp_path / 'a' / 'ckpt.pt'), weights(tmp_path / 'b' / 'ckpt.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize('mode, scope', [('ddp', 'model'), ('fsdp', 'auto')])  # DDP, auto: tests/test_chat.py
def test_two_ranks_compile_once_per_mode(tmp_path, char_data, mode, scope):
    result = run_torchrun(COUNT_SYNCS, REPO / 'train.py', *RUN, '--gradient_accumulation_steps=2',
                          f'--fsdp={mode == "fsdp"}', f'--compile_scope={scope}', cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stderr.count('host syncs: 0 inside the training step') == 2  # each rank
    counts = compile_line(result.stdout)
    if scope == 'auto':  # blocks under torchrun: the hooks stay outside the compiled code, one graph per mode
        assert counts == f'{ONCE_PER_MODE} (blocks)'
    else:
        # Dynamo steps around DDP's own forward (its breaks are DDP's code, the model is one graph);
        # nothing is compiled again after the first step of each mode: the counts each evaluation
        # wrote, from the second on (iteration 4: both modes have run), are the run's final ones
        graphs, breaks, recompiles = map(int, re.findall(r'\d+', counts))
        assert graphs == 2 and counts.endswith('(model)')
        events = [e for e in read_metrics(tmp_path / 'out') if e['event'] in ('eval', 'done')]
        assert [e['iter'] for e in events] == [0, 4, 8, 12, 12]
        assert {(e['graphs'], e['graph_breaks'], e['recompiles']) for e in events[1:]} == {(graphs, breaks, recompiles)}
    assert 'weights identical on all 2 ranks' in result.stdout or mode == 'fsdp'


@pytest.mark.slow
def test_eval_compiles_once(run, trained):
    # the training runs' batch shape, so that Inductor's cache can hand it kernels they compiled
    result = run('eval.py', '--out_dir=out', '--dataset=tiny', '--device=cpu', '--compile=True', '--batch_size=4')
    assert 'compile: 1 graphs, 0 graph breaks, 0 recompiles' in result.stderr
