"""What a run shows while it goes and leaves behind: start-up block, log and eval lines, summary,
the loss plot, streamed samples."""
import io
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from nanogpt import models, report, tokens
from conftest import REPO, TINY_MODEL, script_env, load_script, needs_bpe


def test_start_up_block_eval_lines_and_summary(trained, tmp_path):
    out = (tmp_path / 'trained.txt').read_text()  # the trained fixture's train.py, 30 iterations, evaluated every 10
    assert 'device cpu, dtype float32, compile False, 1 process' in out
    assert 'parameters (2 layers, 2 heads, 16 wide, context 16, vocabulary' in out
    assert '64 tokens per iteration (4 sequences x 16 tokens x 1 micro-steps); 30 iterations; out_dir out' in out
    assert 'step 0: train loss' in out and 'no checkpoint written' in out  # nothing is saved at step 0
    assert 'step 10: train loss' in out and 'saved out/ckpt.pt' in out
    summary = [line for line in out.splitlines() if line.startswith('done:')][0]
    for part in ('30 iterations in', 'best val loss', '1,920 tokens seen', 'peak memory'):
        assert part in summary
    assert 'checkpoint: out/ckpt.pt (iteration 30); sample from it: python sample.py --out_dir=out' in out


def test_gpu_config_on_a_cpu_warns_with_a_time_estimate(tmp_path, char_data):
    shutil.copytree(char_data, tmp_path / 'data' / 'shakespeare_char')
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), '--dataset=shakespeare_char', *TINY_MODEL,
                             '--max_iters=100000000'], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=script_env())
    warning = next(line for line in proc.stdout if line.startswith(('WARNING', 'step')))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert 'on this CPU' in warning and 'config/train_shakespeare_char_cpu.py takes a few minutes' in warning


def test_plot_from_a_real_run(run, trained, tmp_path):
    pytest.importorskip('matplotlib')
    assert 'wrote out/loss.png' in run('plot.py', '--out_dir=out').stdout
    png = (tmp_path / 'out' / 'loss.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 10_000


def run_plot_here(monkeypatch):
    """`python plot.py` (out_dir 'out') in this process: plot.py works at the top level, so loading it runs it."""
    monkeypatch.setattr(sys, 'argv', ['plot.py'])
    load_script('plot.py')


def test_plot_without_matplotlib_says_how_to_get_it(refused, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib then fails, as where it is not installed
    with refused('pip install matplotlib'):
        run_plot_here(monkeypatch)


def test_plot_of_a_folder_without_metrics(refused, tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    monkeypatch.chdir(tmp_path)  # no run in out/
    with refused('out/metrics.jsonl'):
        run_plot_here(monkeypatch)


def test_one_sample_is_streamed_as_it_is_generated(trained):
    # sample.py --num_samples=1: the prompt at once, then each token's text as soon as it is sampled
    model, meta, _ = models.inference_model('resume', str(trained))
    encode, decode = tokens.load_tokenizer(meta)
    printed, flushed = [], []
    stdout = SimpleNamespace(write=printed.append, flush=lambda: flushed.append(len(printed)))
    stream = report.TextStream(decode, encode('the'), stdout)
    torch.manual_seed(1)
    ids = model.eval().generate(torch.tensor([encode('the')]), 20, on_token=lambda token: stream.push(token.item()))
    assert printed[0] == 'the' and len(printed) == 21  # the prompt, then one piece per token
    assert flushed == list(range(1, 22))  # each piece flushed as it is written
    assert ''.join(printed) == decode(ids[0].tolist())


@needs_bpe
def test_text_stream_holds_back_half_a_character():
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    text = 'naïve café 🙂 done'
    ids = enc.encode(text)
    out = io.StringIO()
    stream = report.TextStream(enc.decode, ids[:1], out)
    for token in ids[1:]:
        stream.push(token)
        assert '\ufffd' not in out.getvalue()  # never a broken character, even mid-emoji
    assert out.getvalue() == text
