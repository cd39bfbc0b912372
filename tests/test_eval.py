"""eval.py and nanogpt/evals.py: HellaSwag scored as build-nanogpt does (checked against transformers' GPT-2),
bits per byte with a sliding window, DDP, HellaSwag during training, and bad input. No downloads:
HellaSwag examples are written here in the dataset's own file format, the models are small and random.
Most tests call nanogpt/evals.py's functions as eval.py does; eval.py itself runs where its table, its
results file or torchrun is what is tested."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL, needs_bpe, run_torchrun
from made_up import hellaswag_line, random_hf_gpt2, sample_text, varied_examples, write_hellaswag
from nanogpt import evals, models, runtime
from nanogpt.evals import GPT2_VOCAB
from model import GPT
from nanogpt.report import read_metrics
from nanogpt.tokens import gpt2_encoding

transformers = pytest.importorskip('transformers')

N_POSITIONS = 64  # the random models' context


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """The files the tests write are read by relative paths, as eval.py reads its settings' paths."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cpu():
    """The runtime eval.py sets up with --device=cpu: one process, float32."""
    return runtime.setup_runtime('cpu', 'float32', False)


def as_checkpoint(hf_folder, out_dir):
    """The same model as a checkpoint of ours in out_dir, which eval.py loads without transformers
    (seconds faster per run; one test keeps init_from=<folder>)."""
    model = GPT.from_pretrained(str(hf_folder))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({'model': model.state_dict(), 'model_args': dataclasses.asdict(model.config), 'iter_num': 0},
               out_dir / 'ckpt.pt')


def random_model(tmp_path):
    """A random GPT-2 in tmp_path/hf, and as our checkpoint in tmp_path/ckpt (eval.py --out_dir=ckpt)."""
    hf_model = random_hf_gpt2(tmp_path / 'hf', GPT2_VOCAB, N_POSITIONS, scale=4.0)
    as_checkpoint(tmp_path / 'hf', tmp_path / 'ckpt')
    return hf_model


def hf_target_losses(hf_model, row):
    """The loss of each of row[1:] given the tokens before it, from transformers' model, float64 on the host."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([row[:-1]])).logits[0]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(row[1:]), reduction='none').double()


def hf_ending_losses(hf_model, ctx, ending):
    """(summed, mean) loss of an ending after its context, computed directly: the tokens of ctx and
    of ' ' + ending, the row cropped on the left to what the model can take."""
    enc = gpt2_encoding()
    ctx_ids, end_ids = enc.encode(ctx), enc.encode(' ' + ending)
    row = (ctx_ids + end_ids)[-(N_POSITIONS + 1):]
    losses = hf_target_losses(hf_model, row)[-len(end_ids):]
    return losses.sum().item(), losses.mean().item()


def read_results(path):
    return {(r['task'], r['metric']): r for r in map(json.loads, path.read_text().splitlines())}


def details(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def hellaswag_scores(init_from, out_dir, hellaswag_file, rt, batch_size=8):
    """What eval.py --hellaswag_file=... scores, with every example's details."""
    model, meta, _ = models.inference_model(init_from, out_dir)
    examples = evals.load_hellaswag(hellaswag_file, rt, meta, model.config.vocab_size)
    return evals.hellaswag(model, examples, rt, batch_size, details=True)


def text_scores(out_dir, rt, text_file='', dataset='', stride=0, batch_size=8, max_tokens=0):
    """What eval.py --text_file=... (or --dataset=...) measures: loss and bits per byte."""
    model, meta, _ = models.inference_model('resume', out_dir)
    vocab_size = model.config.vocab_size
    tokens = evals.text_tokens(text_file, meta, max_tokens) if text_file else \
        evals.val_tokens(dataset, meta, vocab_size, max_tokens)
    return evals.text_loss(model, tokens, evals.token_bytes(meta, vocab_size), rt, stride, batch_size)


@needs_bpe
def test_per_ending_losses_match_transformers(tmp_path, cpu):
    hf_model = random_hf_gpt2(tmp_path / 'hf', GPT2_VOCAB, N_POSITIONS, scale=4.0)
    examples = varied_examples(7)
    write_hellaswag(tmp_path / 'hs.jsonl', examples)
    model, meta, name = models.inference_model('hf', '')  # init_from: the Hugging Face folder
    assert name == 'hf' and meta is None  # GPT-2 BPE
    encoded = evals.load_hellaswag('hs.jsonl', cpu, meta, model.config.vocab_size)
    scores = evals.hellaswag(model, encoded, cpu, batch_size=3, details=True)
    got = scores['details']
    assert [d['index'] for d in got] == list(range(7))
    correct = correct_norm = 0
    for (ctx_a, ctx_b, endings, label), d in zip(examples, got):
        expected = [hf_ending_losses(hf_model, f"{ctx_a} {ctx_b}", ending) for ending in endings]
        for (sum_loss, mean_loss), ours_sum, ours_mean in zip(expected, d['sum_losses'], d['mean_losses']):
            assert abs(sum_loss - ours_sum) <= 1e-4 and abs(mean_loss - ours_mean) <= 1e-4
        assert d['pred'] == int(np.argmin([s for s, _ in expected]))
        assert d['pred_norm'] == int(np.argmin([m for _, m in expected]))
        correct, correct_norm = correct + (d['pred'] == label), correct_norm + (d['pred_norm'] == label)
    assert scores['acc'] == correct / 7 and scores['correct'] == correct
    assert scores['acc_norm'] == correct_norm / 7 and scores['correct_norm'] == correct_norm
    assert scores['examples'] == 7 and scores['seconds'] > 0


def the_model(tmp_path):
    """A model that predicts " the" with near certainty whatever the context: each " the" in an
    ending costs ~0, any other token ~30 nats. So the shortest non-" the" ending wins on the sum
    (acc) and the one diluted with " the"s on the mean (acc_norm). Written to tmp_path/ckpt."""
    the = gpt2_encoding().encode(' the')[0]
    hf_model = random_hf_gpt2(tmp_path / 'hf', GPT2_VOCAB, N_POSITIONS, scale=1.0)
    with torch.no_grad():
        direction = torch.ones(32) / math.sqrt(32)
        hf_model.transformer.ln_f.weight.zero_()  # every position's output is ln_f's bias, whatever came before
        hf_model.transformer.ln_f.bias.copy_(direction)
        hf_model.transformer.wte.weight[the] = 30 * direction  # tied with lm_head: the logit of " the" is 30
    hf_model.save_pretrained(tmp_path / 'hf')
    as_checkpoint(tmp_path / 'hf', tmp_path / 'ckpt')


ONE, DILUTED, THES, THREE = 'cat', 'cat dog' + ' the' * 8, 'the the the', 'dog cat dog'
# losses: ONE (30 summed, 30 mean), DILUTED (60, 6), THES (~0, ~0), THREE (90, 30)
KNOWN_ANSWERS = [([ONE, DILUTED, THREE, 'dog dog'], 0, 0, 1),  # (endings, label, pred, pred_norm)
                 ([ONE, DILUTED, THREE, 'dog dog'], 1, 0, 1),
                 ([ONE, THES, DILUTED, THREE], 1, 1, 1),
                 ([ONE, THES, DILUTED, THREE], 3, 1, 1),
                 ([THREE, ONE, DILUTED, THES], 3, 3, 3)]


@needs_bpe
def test_known_answers_sum_against_mean(tmp_path, cpu):
    the_model(tmp_path)
    assert [len(gpt2_encoding().encode(' ' + e)) for e in (ONE, DILUTED, THES, THREE)] == [1, 10, 3, 3]
    write_hellaswag(tmp_path / 'hs.jsonl', [('Some context.', 'it', endings, label)
                                            for endings, label, _, _ in KNOWN_ANSWERS])
    scores = hellaswag_scores('resume', 'ckpt', 'hs.jsonl', cpu)
    got = scores['details']
    assert [(d['pred'], d['pred_norm']) for d in got] == [(p, pn) for _, _, p, pn in KNOWN_ANSWERS]
    assert abs(got[0]['sum_losses'][1] - 60) < 1 and abs(got[0]['mean_losses'][1] - 6) < 0.1
    assert scores['acc'] == 3 / 5 and scores['acc_norm'] == 3 / 5


@needs_bpe
def test_eval_py_prints_a_table_and_appends_its_results(run, tmp_path):
    the_model(tmp_path)
    write_hellaswag(tmp_path / 'hs.jsonl', [('Some context.', 'it', endings, label)
                                            for endings, label, _, _ in KNOWN_ANSWERS])
    # asked for no text and no dataset, eval.py scores HellaSwag
    out = run('eval.py', '--out_dir=ckpt', '--hellaswag_file=hs.jsonl', '--details_file=d.jsonl', '--batch_size=3',
              '--device=cpu').stdout
    assert 'hellaswag' in out and 'acc_norm' in out and 'OpenAI gpt2 0.2859 / 0.2955' in out
    assert 'appended 2 lines to eval_results.jsonl; per-example losses in d.jsonl' in out
    got = details(tmp_path / 'd.jsonl')
    assert [d['index'] for d in got] == list(range(5))
    assert [(d['pred'], d['pred_norm']) for d in got] == [(p, pn) for _, _, p, pn in KNOWN_ANSWERS]
    results = read_results(tmp_path / 'eval_results.jsonl')
    assert results['hellaswag', 'acc']['value'] == 3 / 5 and results['hellaswag', 'acc']['correct'] == 3
    assert results['hellaswag', 'acc_norm']['value'] == 3 / 5
    for r in results.values():
        assert r['model'] == 'ckpt/ckpt.pt (iteration 0)' and r['examples'] == 5
        assert r['seconds'] > 0 and r['examples_per_s'] > 0


def gpt2_val_bin(folder, text):
    """data/<name>/val.bin of text in GPT-2 BPE, as data/shakespeare/prepare.py writes it."""
    folder.mkdir(parents=True)
    np.array(gpt2_encoding().encode_ordinary(text), dtype=np.uint16).tofile(folder / 'val.bin')


@needs_bpe
@pytest.mark.slow
def test_ddp_gives_the_same_counts_as_one_process(tmp_path, cpu):
    random_model(tmp_path)
    write_hellaswag(tmp_path / 'hs.jsonl', varied_examples(11, seed=1))  # 6 batches of 2: uneven shares
    (tmp_path / 'text.txt').write_text(sample_text(3000), encoding='utf-8')
    gpt2_val_bin(tmp_path / 'data' / 'bpe', sample_text(2000))
    result = run_torchrun(REPO / 'eval.py', '--out_dir=ckpt', '--hellaswag=True', '--hellaswag_file=hs.jsonl',
                          '--batch_size=2', '--device=cpu', '--text_file=text.txt', '--dataset=bpe',
                          '--results_file=two.jsonl', '--details_file=two_details.jsonl', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 processes (DDP, gloo)' in result.stdout
    two = read_results(tmp_path / 'two.jsonl')
    assert len(two) == 6  # rank 0 alone writes
    one = hellaswag_scores('resume', 'ckpt', 'hs.jsonl', cpu, batch_size=2)
    for metric, correct in (('acc', 'correct'), ('acc_norm', 'correct_norm')):
        assert two['hellaswag', metric]['correct'] == one[correct]
        assert two['hellaswag', metric]['examples'] == one['examples'] == 11
    for task, measured in (('text:text.txt', text_scores('ckpt', cpu, text_file='text.txt', batch_size=2)),
                           ('val:bpe', text_scores('ckpt', cpu, dataset='bpe', batch_size=2))):
        for metric in ('loss', 'bpb'):
            assert abs(two[task, metric]['value'] - measured[metric]) < 1e-5
            assert two[task, metric]['examples'] == measured['tokens']
            assert two[task, metric]['bytes'] == measured['bytes'] and two[task, metric]['block_size'] == N_POSITIONS
    two_details = details(tmp_path / 'two_details.jsonl')
    assert [d['index'] for d in two_details] == list(range(11))
    for a, b in zip(one['details'], two_details):
        assert (a['pred'], a['pred_norm']) == (b['pred'], b['pred_norm'])
        assert np.allclose(a['sum_losses'], b['sum_losses'], atol=1e-4)


def direct_bits_per_byte(hf_model, text, stride=None):
    """Bits per byte computed directly: each token of <|endoftext|> + text predicted by transformers'
    model from the tokens before it (with stride: from the window that first reads it, begun at a
    multiple of stride and at most N_POSITIONS long), over the text's UTF-8 bytes and ln 2."""
    enc = gpt2_encoding()
    ids = [enc.eot_token] + enc.encode_ordinary(text)
    if stride is None:
        assert len(ids) <= N_POSITIONS + 1
        losses = hf_target_losses(hf_model, ids)
    else:  # token j is read from ids[begin(j):j]: one forward pass per begin, since the model is causal
        begins = {j: max(0, math.ceil((j - N_POSITIONS) / stride)) * stride for j in range(1, len(ids))}
        per_token = {}
        for begin in sorted(set(begins.values())):
            targets = [j for j in begins if begins[j] == begin]
            window = hf_target_losses(hf_model, ids[begin:max(targets) + 1])
            per_token.update({j: window[j - begin - 1] for j in targets})
        losses = torch.stack([per_token[j] for j in sorted(per_token)])
    loss_per_token = losses.mean().item()
    return loss_per_token, loss_per_token * len(losses) / len(text.encode('utf-8')) / math.log(2)


@needs_bpe
def test_bits_per_byte_equals_the_direct_computation(tmp_path, cpu):
    hf_model = random_model(tmp_path)
    short = 'Ünïcode café — naïve “quotes”, 3.14 and a few words.'  # multi-byte characters: bytes != characters
    (tmp_path / 'short.txt').write_text(short, encoding='utf-8')
    loss, bpb = direct_bits_per_byte(hf_model, short)
    n_tokens = len(gpt2_encoding().encode_ordinary(short))
    assert n_tokens <= N_POSITIONS and len(short.encode('utf-8')) > len(short)  # one window; bytes != characters
    for stride in (0, 1):  # the text fits in one window: any stride gives the whole-sequence value
        measured = text_scores('ckpt', cpu, text_file='short.txt', stride=stride)
        assert abs(measured['loss'] - loss) < 1e-5 and abs(measured['bpb'] - bpb) < 1e-5
        assert measured['tokens'] == n_tokens and measured['bytes'] == len(short.encode('utf-8'))


@needs_bpe
def test_sliding_window_over_a_long_text(tmp_path, cpu):
    hf_model = random_model(tmp_path)
    text = sample_text(500)
    (tmp_path / 'long.txt').write_text(text, encoding='utf-8')
    assert len(gpt2_encoding().encode_ordinary(text)) > N_POSITIONS + 24
    for stride in (1, 24):
        loss, bpb = direct_bits_per_byte(hf_model, text, stride)
        measured = text_scores('ckpt', cpu, text_file='long.txt', stride=stride, batch_size=5)
        assert abs(measured['loss'] - loss) < 1e-5 and abs(measured['bpb'] - bpb) < 1e-5
        assert measured['stride'] == stride


def test_sliding_windows_score_every_token_but_the_first_once():
    for n_tokens, block_size, stride in ((10, 4, 1), (10, 4, 2), (10, 4, 4), (3, 8, 4), (100, 16, 5)):
        windows = evals.sliding_windows(n_tokens, block_size, stride)
        scored = [t for begin, end, scored_from in windows for t in range(scored_from + 1, end + 1)]
        assert scored == list(range(1, n_tokens))
        assert all(end - begin <= block_size and begin % stride == 0 for begin, end, _ in windows)


@needs_bpe
def test_val_bin_reads_like_the_same_text(tmp_path, cpu):
    random_model(tmp_path)
    text = sample_text(900)
    (tmp_path / 'text.txt').write_text(text, encoding='utf-8')
    gpt2_val_bin(tmp_path / 'data' / 'bpe', text)
    from_text, from_val = text_scores('ckpt', cpu, text_file='text.txt'), text_scores('ckpt', cpu, dataset='bpe')
    for metric in ('loss', 'bpb'):
        assert abs(from_text[metric] - from_val[metric]) < 1e-6
    assert from_val['bytes'] == len(text.encode('utf-8'))
    from_text = text_scores('ckpt', cpu, text_file='text.txt', max_tokens=50)
    from_val = text_scores('ckpt', cpu, dataset='bpe', max_tokens=50)
    assert from_text['bpb'] == pytest.approx(from_val['bpb'], abs=1e-6)
    assert from_text['tokens'] == from_val['tokens'] == 50


def test_character_model_bits_per_byte_and_hellaswag_in_its_characters(trained, tmp_path, cpu, refused):
    assert not evals.runs_hellaswag('auto', '', 'tiny')  # asked for a dataset (or a text): no HellaSwag
    assert not evals.runs_hellaswag('auto', 'text.txt', '')
    assert evals.runs_hellaswag('auto', '', '') and evals.runs_hellaswag(True, 'text.txt', '')
    _, _, name = models.inference_model('resume', 'out')
    assert name == 'out/ckpt.pt (iteration 30)'
    measured = text_scores('out', cpu, dataset='tiny')
    assert measured['tokens'] == len(np.fromfile(tmp_path / 'data' / 'tiny' / 'val.bin', dtype=np.uint16)) - 1
    assert measured['bytes'] == measured['tokens']  # ASCII: a byte per character
    assert abs(measured['bpb'] - measured['loss'] / math.log(2)) < 1e-9
    # HellaSwag in the model's characters, where it has all of them
    write_hellaswag(tmp_path / 'hs.jsonl', varied_examples(6))
    assert hellaswag_scores('resume', 'out', 'hs.jsonl', cpu)['examples'] == 6
    write_hellaswag(tmp_path / 'euro.jsonl', [('It costs', 'a', ['€.', 'a.', 'b.', 'c.'], 0)])
    with refused("HellaSwag has characters this model's vocabulary lacks (1 of them, e.g. '€')"):
        hellaswag_scores('resume', 'out', 'euro.jsonl', cpu)  # eval.py's and train.py's hellaswag_interval's
    with refused('nothing to evaluate'):
        evals.runs_hellaswag(False, '', '')


def test_bad_hellaswag_files_are_one_line_errors(tmp_path, cpu, monkeypatch, refused):
    def load(path):
        return evals.load_hellaswag(path, cpu, None, GPT2_VOCAB)  # as eval.py does for a GPT-2 BPE model
    with refused('cannot read the HellaSwag file missing.jsonl'):
        load('missing.jsonl')
    path = write_hellaswag(tmp_path / 'bad.jsonl', varied_examples(3))
    path.write_text(path.read_text() + '{"ctx": "no endings", "label": 0}\n')
    with refused('bad.jsonl line 4 is not a labelled HellaSwag example'):
        load('bad.jsonl')
    path.write_text('')
    with refused('holds no HellaSwag examples'):
        load('bad.jsonl')
    # no network: the default file cannot be downloaded
    import requests

    def unreachable(url, timeout):
        raise requests.ConnectionError(url)
    monkeypatch.setattr(requests, 'get', unreachable)
    with refused('could not download', 'data/hellaswag/hellaswag_val.jsonl'):
        load('')
    assert not (tmp_path / 'data' / 'hellaswag' / 'hellaswag_val.jsonl').exists()
    with refused('cannot read none.txt'):
        evals.text_tokens('none.txt', None)
    with refused("unknown init_from 'nowhere'"):
        models.inference_model('nowhere', 'out')


def test_download_writes_the_file_once(monkeypatch):
    import requests

    served = hellaswag_line(0, 'A man.', 'he', ['a.', 'b.', 'c.', 'd.'], 2) + '\n'
    calls = []

    class Response:
        content = served.encode('utf-8')

        def raise_for_status(self):
            pass
    monkeypatch.setattr(requests, 'get', lambda url, timeout: calls.append(url) or Response())
    rt = type('Runtime', (), dict(local_rank=0, ddp=False))()
    for _ in range(2):
        assert evals.hellaswag_path('', rt) == evals.HELLASWAG_FILE
    assert calls == [evals.HELLASWAG_URL]  # downloaded once, then read from disk
    assert evals.HELLASWAG_URL == 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
    assert evals.read_hellaswag(evals.HELLASWAG_FILE)[0]['label'] == 2


def bpe_data(folder, n_tokens=20_000):
    """A GPT-2 BPE dataset (train.bin, val.bin) from sample text."""
    ids = np.array(gpt2_encoding().encode_ordinary(sample_text()), dtype=np.uint16)
    ids = np.resize(ids, n_tokens)
    folder.mkdir(parents=True)
    ids[:18_000].tofile(folder / 'train.bin')
    ids[18_000:].tofile(folder / 'val.bin')


@needs_bpe
def test_hellaswag_during_training(run, tmp_path, cpu):
    bpe_data(tmp_path / 'data' / 'bpe')
    write_hellaswag(tmp_path / 'data' / 'hellaswag' / 'hellaswag_val.jsonl', varied_examples(9))  # the default file
    out = run('train.py', '--dataset=bpe', *TINY_MODEL, '--max_iters=10', '--eval_interval=5', '--log_interval=5',
              '--hellaswag_interval=4', '--wandb_log=True', '--wandb_project=test',
              env={'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path)}).stdout
    lines = [l for l in out.splitlines() if 'hellaswag acc_norm' in l]
    assert [l.split(':')[0] for l in lines] == ['step 0', 'step 4', 'step 8', 'step 10']
    assert '(9 examples' in lines[0]
    events = read_metrics(tmp_path / 'out')
    hellaswag = [e for e in events if e['event'] == 'hellaswag']
    assert [e['iter'] for e in hellaswag] == [0, 4, 8, 10]
    assert all(0 <= e['acc'] <= 1 and 0 <= e['acc_norm'] <= 1 and e['examples'] == 9 for e in hellaswag)
    assert [e['iter'] for e in events if e['event'] == 'eval'] == [0, 5, 10]
    logged = next((tmp_path / 'wandb').glob('offline-run-*/run-*.wandb')).read_bytes()
    assert b'hellaswag/acc_norm' in logged and b'hellaswag/acc' in logged
    # the same numbers as eval.py on the checkpoint (iteration 10)
    assert hellaswag_scores('resume', 'out', 'data/hellaswag/hellaswag_val.jsonl', cpu)['acc_norm'] == \
        hellaswag[-1]['acc_norm']
    # a resume does not score again at its first iteration
    out = run('train.py', '--dataset=bpe', *TINY_MODEL, '--init_from=resume', '--max_iters=12', '--eval_interval=5',
              '--hellaswag_interval=4').stdout
    assert [l.split(':')[0] for l in out.splitlines() if 'hellaswag acc_norm' in l] == ['step 12']
    # plot.py draws it in a second panel
    assert 'wrote out/loss.png' in run('plot.py', '--out_dir=out').stdout
    assert (tmp_path / 'out' / 'loss.png').stat().st_size > 10_000


@needs_bpe
def test_hellaswag_during_training_under_ddp(tmp_path):
    bpe_data(tmp_path / 'data' / 'bpe')
    write_hellaswag(tmp_path / 'hs.jsonl', varied_examples(9))
    result = run_torchrun(REPO / 'train.py', '--dataset=bpe', *TINY_MODEL, '--gradient_accumulation_steps=2',
                          '--max_iters=4', '--eval_interval=4', '--log_interval=2', '--hellaswag_interval=2',
                          '--hellaswag_file=hs.jsonl', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if 'hellaswag acc_norm' in l]
    assert len(lines) == 3 and all('(9 examples' in l for l in lines)  # steps 0, 2, 4; counts summed over ranks
