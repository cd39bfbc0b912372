"""Shared fixtures: run the repo's scripts as a user would, on tiny data in tmp_path."""
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from made_up import sample_text
from nanogpt.report import read_metrics

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'
TIKTOKEN_CACHE = REPO.parent / 'shared' / 'data' / 'tiktoken_cache'

if os.environ.get('PYTEST_XDIST_WORKER'):  # a test per core (pytest.ini): one thread each, or OpenMP threads fight
    os.environ.setdefault('OMP_NUM_THREADS', '1')

if TIKTOKEN_CACHE.exists():  # GPT-2 BPE offline, here and in the scripts the tests run
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))
# the scripts' environment: pytest's at its start, not what this process's imports add (Inductor's cache, ...)
STARTING_ENVIRONMENT = dict(os.environ)


def pytest_collection_modifyitems(items):
    """The tests marked slow first, longest first: handed out one at a time (pytest.ini), the cores finish together."""
    def seconds(item):
        slow = item.get_closest_marker('slow')
        return 0 if slow is None else slow.args[0] if slow.args else 15
    items.sort(key=seconds, reverse=True)  # stable: equals keep their order


def _bpe_available():
    with contextlib.suppress(Exception):
        import tiktoken
        return bool(tiktoken.get_encoding('gpt2'))
    return False


needs_bpe = pytest.mark.skipif(not _bpe_available(), reason="GPT-2 BPE files neither in ../shared nor downloadable")

# a few thousand parameters, trained in seconds on a CPU; plain linears on every CPU, so that all run the same numbers
TINY_MODEL = ['--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4',
              '--gradient_accumulation_steps=1', '--device=cpu', '--compile=False', '--dropout=0.0',
              '--bias=False', '--eval_iters=2', '--learning_rate=3e-3', '--warmup_iters=2', '--onednn=False']
TRAINED_RUN = ['--dataset=tiny', '--max_iters=30', '--eval_interval=10', '--log_interval=1', *TINY_MODEL]  # `trained`


def script_env(extra=None):
    """The environment of a script the tests start: offline, unbuffered, plus extra."""
    return {**STARTING_ENVIRONMENT, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true',
            'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TRANSFORMERS_VERBOSITY': 'error', **(extra or {})}


def run_script(script, *args, cwd, expect=0, env=None, timeout=240, torchrun=None, **popen_args):
    """python script args in cwd, a process of its own (torchrun: its options); fails unless it exits with expect."""
    python = [sys.executable, '-m', 'torch.distributed.run', *torchrun] if torchrun else [sys.executable]
    result = subprocess.run([*python, str(REPO / script), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=script_env(env), **popen_args)
    if expect is not None:
        assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_torchrun(script, *args, cwd, options=('--standalone', '--nproc_per_node=2'), **kwargs):
    """torchrun with options (by default 2 processes on this machine) on a script, any exit status."""
    return run_script(script, *args, cwd=cwd, torchrun=options, **{'expect': None, **kwargs})


def train_losses(out_dir):
    """{iteration: loss} of a run's log lines."""
    return {e['iter']: e['loss'] for e in read_metrics(out_dir) if e['event'] == 'train'}


@pytest.fixture
def run(tmp_path):
    """run('train.py', '--max_iters=5', ...): run_script in tmp_path (unless cwd= says otherwise)."""
    return lambda script, *args, cwd=None, **kwargs: run_script(script, *args, cwd=cwd or tmp_path, **kwargs)


def made_once(tmp_path_factory, name, make):
    """make(folder) once per run: under xdist the first process to ask makes it, the others wait for it."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root  # the workers' common folder
    with FileLock(root / f'{name}.lock'):
        if not (root / f'{name}.made').exists():  # a make that failed is made again, from nothing
            shutil.rmtree(root / name, ignore_errors=True)
            (root / name).mkdir()
            make(root / name)
            (root / f'{name}.made').touch()
    return root / name


@pytest.fixture(scope='session')
def prepared_data(tmp_path_factory):
    """A character-level dataset (data/tiny), prepared once per run by the real prepare.py."""
    def prepare(folder):
        (folder / 'input.txt').write_text(sample_text(), encoding='utf-8')
        run_script('data/shakespeare_char/prepare.py', '--input_file=input.txt', '--out_dir=data/tiny', cwd=folder)
    return made_once(tmp_path_factory, 'prepared', prepare) / 'data' / 'tiny'


@pytest.fixture
def char_data(tmp_path, prepared_data):
    """tmp_path/data/tiny: a copy of prepared_data."""
    return shutil.copytree(prepared_data, tmp_path / 'data' / 'tiny')


@pytest.fixture
def trained(tmp_path, char_data, tmp_path_factory):
    """tmp_path/out: TRAINED_RUN on char_data (trained once per run); what train.py printed: tmp_path/trained.txt."""
    def train(folder):
        shutil.copytree(char_data, folder / 'data' / 'tiny')
        (folder / 'trained.txt').write_text(run_script('train.py', *TRAINED_RUN, cwd=folder).stdout)
    made = made_once(tmp_path_factory, 'trained', train)
    shutil.copy(made / 'trained.txt', tmp_path)
    return shutil.copytree(made / 'out', tmp_path / 'out')


def load_script(relative_path):
    """A script imported as a module, its top level run in this process (prepare scripts' work waits under
    __main__; sample.py and plot.py do theirs with the sys.argv they find)."""
    spec = importlib.util.spec_from_file_location(relative_path.replace('/', '_')[:-3], REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_line_error(result, *fragments):
    """Bad input: exit status 2, one line on stderr that says what is wrong, no traceback (a subprocess.run result)."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.fixture
def refused(capsys):
    """with refused('fragment', ...): code -- it stops as report.fail does: exit 2, one line with every fragment."""
    @contextlib.contextmanager
    def expect(*fragments):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            yield
        assert_one_line_error(subprocess.CompletedProcess([], stop.value.code, '', capsys.readouterr().err), *fragments)
    return expect
