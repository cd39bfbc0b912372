"""Shared fixtures: run the repo's scripts as a user would, on tiny data in tmp_path."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
SHAKESPEARE = SHARED_DATA / 'tinyshakespeare' / 'input.txt'
TIKTOKEN_CACHE = SHARED_DATA / 'tiktoken_cache'

# a model of a few thousand parameters that trains in seconds on a CPU
TINY_MODEL = ['--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4',
              '--gradient_accumulation_steps=1', '--device=cpu', '--compile=False', '--dropout=0.0',
              '--bias=False', '--eval_iters=2', '--learning_rate=3e-3', '--warmup_iters=2']


def sample_text(n_chars=30_000):
    """Shakespeare when ../shared/data has it, otherwise made-up text with a similar alphabet."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text(encoding='utf-8')[:n_chars]
    words = ['the', 'king', 'my', 'lord', 'thou', 'art', 'not', 'what', 'say', 'ROMEO:', 'JULIET:', 'and', 'of']
    lines = [' '.join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(n_chars // 40)]
    return '\n'.join(lines) + '\n'


def _env(extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED='1', WANDB_MODE='offline', WANDB_SILENT='true')
    if TIKTOKEN_CACHE.exists():
        env.setdefault('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))
    env.update(extra or {})
    return env


@pytest.fixture
def run(tmp_path):
    """run('train.py', '--max_iters=5', ...): the script from the repo, in tmp_path, as a subprocess.
    Fails the test on a non-zero exit unless expect= says otherwise."""
    def _run(script, *args, expect=0, cwd=None, env=None, timeout=240):
        result = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or tmp_path,
                                capture_output=True, text=True, timeout=timeout, env=_env(env))
        if expect is not None:
            assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result
    return _run


@pytest.fixture
def char_data(tmp_path, run):
    """A character-level dataset prepared by the real prepare.py into tmp_path/data/tiny."""
    text_file = tmp_path / 'input.txt'
    text_file.write_text(sample_text(), encoding='utf-8')
    run('data/shakespeare_char/prepare.py', f'--input_file={text_file}', f'--out_dir={tmp_path / "data" / "tiny"}')
    return tmp_path / 'data' / 'tiny'


@pytest.fixture
def trained(tmp_path, run, char_data):
    """out_dir of a tiny model trained for 30 iterations on char_data."""
    run('train.py', '--dataset=tiny', '--out_dir=out', '--max_iters=30', '--eval_interval=10', '--log_interval=1',
        *TINY_MODEL)
    return tmp_path / 'out'


def assert_one_line_error(result, *fragments):
    """Bad input: exit status 2, one line on stderr that says what is wrong, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'Traceback' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
