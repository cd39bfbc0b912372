"""data/prepare.py and nanogpt/corpus.py: your own corpus (a text file, a folder, JSON lines, Parquet, a
Hugging Face dataset) with your own tokenizer (its characters, GPT-2's BPE, or a byte-level BPE trained
on it), then trained, sampled and evaluated from the checkpoint alone; uint32 ids for large
vocabularies; batches aligned to documents. corpus.prepare is the script's work, called here in-process."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, assert_one_line_error, needs_bpe
from made_up import sample_text, varied_examples, write_hellaswag
from nanogpt import corpus, evals, models, runtime, tokens
from nanogpt.data import Blocks, check_dataset, document_starts, read_meta

TRAIN = ['--max_iters=6', '--eval_interval=6', *TINY_MODEL]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """corpus.prepare and the dataset readers take paths as the scripts do: relative to the current folder."""
    monkeypatch.chdir(tmp_path)


def test_a_bpe_of_your_own_trains_samples_and_evaluates_without_the_data(run, tmp_path):
    (tmp_path / 'corpus.txt').write_text(sample_text(20_000), encoding='utf-8')
    out = run('data/prepare.py', '--input=corpus.txt', '--tokenizer=bpe', '--vocab_size=300').stdout
    assert 'trained a byte-level BPE of 300 tokens' in out and 'train with: python train.py --dataset=corpus' in out
    folder = tmp_path / 'data' / 'corpus'
    assert {p.name for p in folder.iterdir()} == {'train.bin', 'val.bin', 'meta.pkl', 'tokenizer.json'}
    meta = pickle.loads((folder / 'meta.pkl').read_bytes())
    assert meta['vocab_size'] == 300 and meta['tokenizer'] == 'bpe'
    train = np.fromfile(folder / 'train.bin', dtype=np.uint16)
    assert train.max() < 300 and train[-1] == meta['eot']  # the document ends with <|endoftext|>
    val_text = (tmp_path / 'corpus.txt').read_text()[-1500:]
    run('train.py', '--dataset=corpus', '--out_dir=out', *TRAIN)
    shutil.rmtree(tmp_path / 'data')  # the tokenizer travels in the checkpoint
    sample = run('sample.py', '--out_dir=out', '--device=cpu', '--start=ROMEO:', '--num_samples=1',
                 '--max_new_tokens=30').stdout
    assert sample.startswith('ROMEO:') and len(sample) > len('ROMEO:')
    (tmp_path / 'val.txt').write_text(val_text, encoding='utf-8')
    write_hellaswag(tmp_path / 'hs.jsonl', varied_examples(5))
    run('eval.py', '--out_dir=out', '--device=cpu', '--text_file=val.txt', '--hellaswag=True',
        '--hellaswag_file=hs.jsonl', '--results_file=r.jsonl')
    rows = {(r['task'], r['metric']): r for r in map(json.loads, (tmp_path / 'r.jsonl').read_text().splitlines())}
    # bits per byte counts every byte of the text once, whatever the tokens
    assert rows['text:val.txt', 'bpb']['value'] > 0 and rows['text:val.txt', 'loss']['examples'] > 0
    # HellaSwag in the model's own tokens
    assert rows['hellaswag', 'acc_norm']['examples'] == 5


def test_a_folder_of_documents_with_its_characters(tmp_path, capsys):
    stories = tmp_path / 'stories'
    stories.mkdir()
    for i in range(10):
        (stories / f'{i}.txt').write_text(f'story {i}: ' + sample_text(3000)[i * 100:i * 100 + 2000], encoding='utf-8')
    corpus.prepare('stories', 'data/stories', tokenizer='char')
    out = capsys.readouterr().out
    assert '10 documents' in out and '1 for validation' in out
    meta = check_dataset('data/stories', 'stories')  # what train.py checks first
    val = np.fromfile(tmp_path / 'data' / 'stories' / 'val.bin', dtype=np.uint16)
    assert (val == meta['eot']).sum() == 1 and val[-1] == meta['eot']  # one whole document
    # what train.py reads, and sample.py writes: the end of a document spells nothing
    blocks = Blocks('data/stories', meta, 16, meta['vocab_size'], 'random')
    x, y = blocks.batch('train', 4, torch.Generator().manual_seed(0), runtime.setup_runtime('cpu', 'float32', False))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    encode, decode = tokens.load_tokenizer(meta)
    assert decode(encode('story') + [meta['eot']]) == 'story'


@needs_bpe
def test_json_lines_with_gpt2_bpe(tmp_path):
    lines = [json.dumps({'body': sample_text(4000)[i * 300:i * 300 + 300]}) for i in range(8)]
    (tmp_path / 'docs.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    assert corpus.prepare('docs.jsonl', text_column='body', tokenizer='gpt2', val_fraction=0.25) == 'data/docs'
    folder = tmp_path / 'data' / 'docs'
    assert not (folder / 'meta.pkl').exists()  # GPT-2 BPE, as data/shakespeare/prepare.py writes it
    ids = np.fromfile(folder / 'train.bin', dtype=np.uint16)
    assert (ids == tokens.GPT2_EOT).sum() == 6  # 8 documents, 2 of them for validation


def test_parquet_and_a_hugging_face_dataset_read_the_same_documents(tmp_path, capsys, refused):
    pa, parquet = pytest.importorskip('pyarrow'), pytest.importorskip('pyarrow.parquet')
    texts = [f'document {i}: ' + sample_text(6000)[i * 500:i * 500 + 400] for i in range(12)]
    parquet.write_table(pa.table({'id': list(range(12)), 'story': texts}), tmp_path / 'docs.parquet')
    corpus.prepare('docs.parquet', 'data/pq', text_column='story', tokenizer='char')
    # `datasets` reads a local folder as it would a dataset on the Hub
    (tmp_path / 'hub').mkdir()
    (tmp_path / 'hub' / 'train.jsonl').write_text(''.join(json.dumps({'story': t}) + '\n' for t in texts))
    capsys.readouterr()
    corpus.prepare('hf:hub', 'data/hf', text_column='story', tokenizer='char')
    assert '12 documents, 1 for validation' in capsys.readouterr().out
    for split in ('train', 'val'):
        assert (tmp_path / 'data' / 'pq' / f'{split}.bin').read_bytes() == \
            (tmp_path / 'data' / 'hf' / f'{split}.bin').read_bytes()
    with refused("docs.parquet has no column 'text' (it has id, story)"):
        corpus.prepare('docs.parquet')
    (tmp_path / 'nothing').mkdir()  # a dataset `datasets` cannot load, without asking the Hub
    with refused("cannot load the Hugging Face dataset 'nothing'"):
        corpus.prepare('hf:nothing')


def test_processes_encode_exactly_as_one(tmp_path):
    (tmp_path / 'corpus.txt').write_text(sample_text(30_000), encoding='utf-8')
    for procs in (1, 2):
        corpus.prepare('corpus.txt', f'data/p{procs}', vocab_size=400, num_proc=procs)
    for name in ('train.bin', 'val.bin', 'tokenizer.json'):
        assert (tmp_path / 'data' / 'p1' / name).read_bytes() == (tmp_path / 'data' / 'p2' / name).read_bytes()


def test_a_vocabulary_past_uint16_is_stored_as_uint32(tmp_path):
    # 70,000 different characters: more ids than uint16 holds
    chars = [chr(c) for c in range(0x100, 0x100 + 72_100) if not 0xD800 <= c < 0xE000][:70_000]
    lines = [''.join(chars[i:i + 100]) for i in range(0, len(chars), 100)]
    (tmp_path / 'wide.txt').write_text('\n'.join(lines * 2) + '\n', encoding='utf-8')
    corpus.prepare('wide.txt', tokenizer='char')
    meta = check_dataset('data/wide', 'wide')
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == 70_002  # and '\n', and end-of-text
    train = np.fromfile(tmp_path / 'data' / 'wide' / 'train.bin', dtype=np.uint32)
    assert train.max() == meta['eot'] == 70_001 and (train > 65_535).sum() > 1000
    # train.py's batches read uint32: rows at ids past uint16 are train.bin's stretches as they are
    blocks = Blocks('data/wide', meta, 16, meta['vocab_size'], 'random')
    starts = np.flatnonzero(train[:-16] > 65_535)[::1000]
    x, _ = blocks.read('train', starts, runtime.setup_runtime('cpu', 'float32', False))
    assert [row.tolist() for row in x] == [train[s:s + 16].tolist() for s in starts]
    # eval.py's --dataset reads val.bin as uint32: every token once
    val = np.fromfile(tmp_path / 'data' / 'wide' / 'val.bin', dtype=np.uint32)
    assert evals.val_tokens('wide', meta, meta['vocab_size']).tolist() == val.tolist()
    encode, decode = tokens.load_tokenizer(meta)  # sample.py's, from the meta a checkpoint carries
    assert decode(encode(chars[-1])) == chars[-1] and encode(chars[-1])[0] > 65_535


@pytest.mark.slow
def test_batches_of_documents_resume_exactly(run, tmp_path):
    lines = [json.dumps({'text': f'tale {i}. ' + sample_text(9000)[i * 300:i * 300 + 60 + 7 * i]}) for i in range(30)]
    (tmp_path / 'tales.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    corpus.prepare('tales.jsonl', tokenizer='char')
    meta = read_meta('data/tales/meta.pkl')
    train = np.fromfile(tmp_path / 'data' / 'tales' / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'data' / 'tales' / 'val.bin', dtype=np.uint16)
    train_documents, val_documents = (train == meta['eot']).sum(), (val == meta['eot']).sum()
    assert train_documents + val_documents == 30 and val_documents == 3  # val_fraction 0.1 of the tales
    starts = document_starts('data/tales/train.bin', meta['eot'], block_size=16)
    # every tale is longer than a block: each begins a row, at 0 or after an end-of-text
    assert starts[0] == 0 and (train[starts[1:] - 1] == meta['eot']).all() and len(starts) == train_documents
    blocks = Blocks('data/tales', meta, 16, meta['vocab_size'], 'documents')
    assert set(blocks.starts('train', 64, torch.Generator().manual_seed(0))) <= set(starts)
    # batching at random draws other rows from the same generator
    windows = Blocks('data/tales', meta, 16, meta['vocab_size'], 'random')
    assert not set(windows.starts('train', 64, torch.Generator().manual_seed(0))) <= set(starts)
    docs = ['--dataset=tales', '--batching=documents', *TINY_MODEL, '--eval_interval=4', '--always_save_checkpoint=True']
    run('train.py', *docs, '--out_dir=straight', '--max_iters=8')
    run('train.py', *docs, '--out_dir=split', '--max_iters=4')
    run('train.py', *docs, '--out_dir=split', '--max_iters=8', '--init_from=resume')
    straight, split = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in ('straight', 'split'))
    assert all(torch.equal(tensor, split[name]) for name, tensor in straight.items())
    run('train.py', '--dataset=tales', *TINY_MODEL, '--out_dir=windows', '--max_iters=8', '--eval_interval=4',
        '--always_save_checkpoint=True')
    windows = torch.load(tmp_path / 'windows' / 'ckpt.pt', weights_only=True)['model']
    assert not all(torch.equal(tensor, windows[name]) for name, tensor in straight.items())  # other batches


def test_document_batches_need_documents(char_data, refused):
    meta = read_meta('data/tiny/meta.pkl')
    with refused("batching='documents' needs documents, and data/tiny has no end-of-text token"):
        Blocks('data/tiny', meta, 16, meta['vocab_size'], 'documents')
    with refused("batching must be 'random' or 'documents', not 'books'"):
        Blocks('data/tiny', meta, 16, meta['vocab_size'], 'books')


def test_preparing_over_a_dataset_of_another_tokenizer_is_refused(tmp_path, refused):
    (tmp_path / 'corpus.txt').write_text(sample_text(5000), encoding='utf-8')
    corpus.prepare('corpus.txt', tokenizer='char')
    corpus.prepare('corpus.txt', tokenizer='char')  # the same again: fine
    before = (tmp_path / 'data' / 'corpus' / 'train.bin').read_bytes()
    with refused('data/corpus already holds a dataset with another tokenizer (char)'):
        corpus.prepare('corpus.txt', vocab_size=300)
    assert (tmp_path / 'data' / 'corpus' / 'train.bin').read_bytes() == before


def test_bytes_that_are_not_utf8_can_be_replaced(tmp_path):
    (tmp_path / 'mixed.txt').write_bytes('caf\xe9 au lait\n'.encode('latin-1') * 50 + 'ok\n'.encode() * 20)
    corpus.prepare('mixed.txt', tokenizer='char', utf8_errors='replace')
    assert '\ufffd' in read_meta('data/mixed/meta.pkl')['stoi']


def test_resuming_on_data_of_another_tokenizer_is_refused(tmp_path, refused):
    (tmp_path / 'corpus.txt').write_text(sample_text(8000), encoding='utf-8')
    corpus.prepare('corpus.txt', 'data/bpe', tokenizer='bpe', vocab_size=280)
    corpus.prepare('corpus.txt', 'data/chars', tokenizer='char')
    trained_on_bpe = {'meta': read_meta('data/bpe/meta.pkl')}  # what train.py's checkpoints carry
    models.check_tokenizer(trained_on_bpe, read_meta('data/bpe/meta.pkl'), 'data/bpe')  # its own data: fine
    with refused('trained with another tokenizer (bpe) than data/chars has (char)'):
        models.check_tokenizer(trained_on_bpe, read_meta('data/chars/meta.pkl'), 'data/chars')


@pytest.mark.parametrize('setup, settings, says', [
    (lambda p: (p / 'latin1.txt').write_bytes('caf\xe9 au lait'.encode('latin-1')), dict(input='latin1.txt'),
     'latin1.txt is not UTF-8 text: byte 3 is'),
    (lambda p: (p / 'l.jsonl').write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n'), dict(input='l.jsonl'),
     'l.jsonl is not UTF-8 text: byte 30 is'),
    (lambda p: (p / 'empty.txt').write_text(''), dict(input='empty.txt'), 'empty.txt holds no text'),
    (lambda p: (p / 'd.jsonl').write_text('{"text": "a"}\n{"body": "b"}\n'), dict(input='d.jsonl'),
     "d.jsonl line 2 has no text under 'text'"),
    (lambda p: (p / 'c.txt').write_text('abc'), dict(input='c.txt', vocab_size=100), 'needs at least 261 tokens'),
    (lambda p: (p / 'c.txt').write_text('abc'), dict(input='c.txt', vocab_size=5_000_000_000),
     'uint32 token ids allow at most 4294967296'),
    (lambda p: (p / 'd.jsonl').write_text('{"text": "a"}\nnot json\n'), dict(input='d.jsonl'),
     'd.jsonl line 2 is not JSON'),
    (lambda p: (p / 'one.jsonl').write_text('{"text": "just one"}\n'), dict(input='one.jsonl'),
     'validation got no text: the corpus is one document'),
    (lambda p: None, dict(input='missing.txt'), "input 'missing.txt' does not exist"),
])
def test_bad_corpora_are_one_line_errors(tmp_path, refused, setup, settings, says):
    setup(tmp_path)
    with refused(says):
        corpus.prepare(**settings)


def test_bad_input_on_the_command_line_is_one_line(run):
    assert_one_line_error(run('data/prepare.py', '--input=missing.txt', expect=None),
                          "prepare.py: error: input 'missing.txt' does not exist")
