"""What a run shows while it goes and leaves behind: start-up block, log and eval lines, summary,
the loss plot, streamed samples."""
import io
import shutil
import signal
import subprocess
import sys

import pytest

from nanogpt import data
from conftest import REPO, TINY_MODEL, _env, assert_one_line_error, needs_bpe


def test_start_up_block_eval_lines_and_summary(run, char_data):
    out = run('train.py', '--dataset=tiny', *TINY_MODEL, '--max_iters=20', '--eval_interval=10',
              '--always_save_checkpoint=False').stdout
    assert 'device cpu, dtype float32, compile False, 1 process' in out
    assert 'parameters (2 layers, 2 heads, 16 wide, context 16, vocabulary' in out
    assert '64 tokens per iteration (4 sequences x 16 tokens x 1 micro-steps); 20 iterations; out_dir out' in out
    assert 'step 0: train loss' in out and 'no checkpoint written' in out  # nothing is saved at step 0
    assert 'step 10: train loss' in out and 'saved out/ckpt.pt' in out
    summary = [line for line in out.splitlines() if line.startswith('done:')][0]
    for part in ('20 iterations in', 'best val loss', '1,280 tokens seen', 'peak memory'):
        assert part in summary
    assert 'checkpoint: out/ckpt.pt (iteration 20); sample from it: python sample.py --out_dir=out' in out


def test_gpu_config_on_a_cpu_warns_with_a_time_estimate(tmp_path, char_data):
    shutil.copytree(char_data, tmp_path / 'data' / 'shakespeare_char')
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), '--dataset=shakespeare_char', *TINY_MODEL,
                             '--max_iters=100000000'], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=_env())
    warning = next(line for line in proc.stdout if line.startswith(('WARNING', 'step')))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert 'on this CPU' in warning and 'config/train_shakespeare_char_cpu.py takes a few minutes' in warning


def test_plot_from_a_real_run(run, trained, tmp_path):
    pytest.importorskip('matplotlib')
    assert 'wrote out/loss.png' in run('plot.py', '--out_dir=out').stdout
    png = (tmp_path / 'out' / 'loss.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 10_000


def test_plot_without_matplotlib_says_how_to_get_it(run, trained, tmp_path):
    fake = tmp_path / 'no_matplotlib' / 'matplotlib'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ImportError('not installed')\n")
    result = run('plot.py', '--out_dir=out', env={'PYTHONPATH': str(fake.parent)}, expect=None)
    assert_one_line_error(result, 'pip install matplotlib')


def test_plot_of_a_folder_without_metrics(run, tmp_path):
    pytest.importorskip('matplotlib')
    assert_one_line_error(run('plot.py', '--out_dir=nothing', expect=None), 'nothing/metrics.jsonl')


def test_one_sample_is_streamed_as_it_is_generated(trained, tmp_path):
    proc = subprocess.Popen([sys.executable, str(REPO / 'sample.py'), '--out_dir=out', '--num_samples=1',
                             '--max_new_tokens=20000', '--start=the', '--seed=1'],
                            cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=_env())
    first = proc.stdout.read(20)
    still_running = proc.poll() is None  # the first text arrived long before the sample was finished
    proc.kill()
    proc.wait(timeout=60)
    assert still_running and first.startswith('the')


@needs_bpe
def test_text_stream_holds_back_half_a_character():
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    text = 'naïve café 🙂 done'
    ids = enc.encode(text)
    out = io.StringIO()
    stream = data.TextStream(enc.decode, ids[:1], out)
    for token in ids[1:]:
        stream.push(token)
        assert '\ufffd' not in out.getvalue()  # never a broken character, even mid-emoji
    assert out.getvalue() == text
