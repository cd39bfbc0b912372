"""Shared fixtures: run the repo's scripts as a user would, on tiny data in tmp_path."""
import contextlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogpt.report import read_metrics

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
SHAKESPEARE = SHARED_DATA / 'tinyshakespeare' / 'input.txt'
TIKTOKEN_CACHE = SHARED_DATA / 'tiktoken_cache'

if os.environ.get('PYTEST_XDIST_WORKER'):  # a test per core (pytest.ini): one thread each, or OpenMP threads fight
    os.environ.setdefault('OMP_NUM_THREADS', '1')

if TIKTOKEN_CACHE.exists():  # GPT-2 BPE offline, here and in the scripts the tests run
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))
# what the scripts the tests start see: the environment pytest started with, not what libraries the tests
# import in this process add to it later (Inductor's cache folder, tokenizers' parallelism, ...)
STARTING_ENVIRONMENT = dict(os.environ)


def pytest_collection_modifyitems(items):
    """The tests marked slow first, longest first: handed out one at a time (pytest.ini), the cores then
    finish at about the same time."""
    def seconds(item):
        slow = item.get_closest_marker('slow')
        return 0 if slow is None else slow.args[0] if slow.args else 15
    items.sort(key=seconds, reverse=True)  # stable: equals keep their order


def _bpe_available():
    try:
        import tiktoken
        tiktoken.get_encoding('gpt2')
        return True
    except Exception:
        return False


needs_bpe = pytest.mark.skipif(not _bpe_available(), reason="GPT-2 BPE files: neither ../shared/data/tiktoken_cache "
                                                             "nor network to download them")

# a model of a few thousand parameters that trains in seconds on a CPU; plain linears whatever this CPU's
# rule says (tests/test_onednn.py), so that every machine runs the same numbers
TINY_MODEL = ['--n_layer=2', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4',
              '--gradient_accumulation_steps=1', '--device=cpu', '--compile=False', '--dropout=0.0',
              '--bias=False', '--eval_iters=2', '--learning_rate=3e-3', '--warmup_iters=2', '--onednn=False']


def sample_text(n_chars=30_000):
    """Made-up verse, the same wherever the tests run (they must not depend on ../shared): speakers' names
    and lines of words, every letter in both cases, the punctuation of a play."""
    rng = random.Random(0)
    words = ('the king my lord thou art not what say and of a quick brown fox jumps over lazy dog while '
             'she holds her hammer in your hand then we go to see he is on roof with shingles up down by '
             'ground ladder climbs man woman sitting starts pulling throws them very zounds xanthe').split()
    speakers = ('ROMEO', 'JULIET', 'KING RICHARD', 'First Citizen', 'MENENIUS')
    lines = []
    while sum(map(len, lines)) < n_chars:
        lines.append(f"{rng.choice(speakers)}:")
        for _ in range(rng.randint(1, 4)):
            sentence = ' '.join(rng.choice(words) for _ in range(rng.randint(3, 9)))
            lines.append(sentence.capitalize() + rng.choice(".,;:!?-'"))
        lines.append('')  # a blank line between speeches
    return '\n'.join(lines)[:n_chars]


def script_env(extra=None):
    """The environment of a script the tests start: offline, unbuffered, plus extra."""
    return {**STARTING_ENVIRONMENT, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true',
            'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TRANSFORMERS_VERBOSITY': 'error', **(extra or {})}


def run_script(script, *args, cwd, expect=0, env=None, timeout=240, torchrun=None, **popen_args):
    """python script args (or torchrun with the options torchrun) in cwd, in a process of its own; fails the
    test on an exit status other than expect (None: any); other keywords go to subprocess.run."""
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


def random_hf_gpt2(path, vocab_size=100, n_positions=64, activation='gelu_new', scale=8.0):
    """A small random GPT2LMHeadModel saved to path; weights scaled up so that small numerical
    differences (e.g. the wrong GELU, or which ending is likelier) show clearly."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                                     activation_function=activation, bos_token_id=None, eos_token_id=None)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith('.weight') and p.dim() == 2:
                p.mul_(scale)
    hf_model.save_pretrained(path)
    return hf_model


@pytest.fixture
def run(tmp_path):
    """run('train.py', '--max_iters=5', ...): run_script in tmp_path (unless cwd= says otherwise)."""
    return lambda script, *args, cwd=None, **kwargs: run_script(script, *args, cwd=cwd or tmp_path, **kwargs)


@pytest.fixture(scope='session')
def prepared_data(tmp_path_factory):
    """A character-level dataset (data/tiny), prepared once per session by the real prepare.py."""
    folder = tmp_path_factory.mktemp('prepared')
    (folder / 'input.txt').write_text(sample_text(), encoding='utf-8')
    run_script('data/shakespeare_char/prepare.py', '--input_file=input.txt', '--out_dir=data/tiny', cwd=folder)
    return folder / 'data' / 'tiny'


@pytest.fixture
def char_data(tmp_path, prepared_data):
    """tmp_path/data/tiny: a copy of prepared_data."""
    shutil.copytree(prepared_data, tmp_path / 'data' / 'tiny')
    return tmp_path / 'data' / 'tiny'


@pytest.fixture(scope='session')
def _trained(tmp_path_factory, prepared_data):
    folder = tmp_path_factory.mktemp('trained')
    shutil.copytree(prepared_data, folder / 'data' / 'tiny')
    run_script('train.py', '--dataset=tiny', '--out_dir=out', '--max_iters=30', '--eval_interval=10',
                '--log_interval=1', *TINY_MODEL, cwd=folder)
    return folder / 'out'


@pytest.fixture
def trained(tmp_path, char_data, _trained):
    """tmp_path/out: a tiny model trained (once per session) for 30 iterations on char_data."""
    shutil.copytree(_trained, tmp_path / 'out')
    return tmp_path / 'out'


def load_script(relative_path):
    """A script of the repo imported as a module: its top-level code runs in this process (a prepare
    script's work waits under __main__; sample.py and plot.py do theirs, with the sys.argv they find)."""
    spec = importlib.util.spec_from_file_location(relative_path.replace('/', '_')[:-3], REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_line_error(result, *fragments):
    """Bad input: exit status 2, one line on stderr that says what is wrong, no traceback. result: a script's
    subprocess.run result (refused below does it in-process)."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'Traceback' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def refused(capsys):
    """with refused('fragment', ...): code -- the code stops as bad input does (nanogpt.report.fail): exit
    status 2 and one line on stderr that holds every fragment."""
    @contextlib.contextmanager
    def expect(*fragments):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            yield
        err = capsys.readouterr().err
        assert_one_line_error(subprocess.CompletedProcess([], stop.value.code, '', err), *fragments)
    return expect


# HellaSwag in its own file format, for eval.py and train.py --hellaswag_interval
def hellaswag_line(ind, ctx_a, ctx_b, endings, label):
    """One line of hellaswag_val.jsonl, with every field the real file has."""
    return json.dumps({"ind": ind, "activity_label": "Roof shingle removal", "ctx_a": ctx_a, "ctx_b": ctx_b,
                       "ctx": f"{ctx_a} {ctx_b}".strip(), "split": "val", "split_type": "indomain", "label": label,
                       "endings": endings, "source_id": f"activitynet~v_{ind:08d}"})


def write_hellaswag(path, examples):
    """examples: (ctx_a, ctx_b, endings, label) each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(hellaswag_line(i, *e) + '\n' for i, e in enumerate(examples)), encoding='utf-8')
    return path


WORDS = ('a man is sitting on the roof he starts pulling up shingles and throws them down to the ground while '
         'a woman holds the ladder then she climbs up with a hammer in her hand').split()


def varied_examples(n, seed=0):
    """n examples of varied lengths, the second one with a context longer than the models' context."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        ctx = ' '.join(rng.choice(WORDS, 150 if i == 1 else rng.integers(3, 30)))
        endings = [' '.join(rng.choice(WORDS, rng.integers(1, 15))) + '.' for _ in range(4)]
        examples.append((ctx.capitalize() + '.', WORDS[i % len(WORDS)], endings, int(rng.integers(4))))
    return examples
