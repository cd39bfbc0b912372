"""data/prepare.py: your own corpus (a text file, a folder, JSON lines, Parquet, a Hugging Face
dataset) with your own tokenizer (its characters, GPT-2's BPE, or a byte-level BPE trained on it),
then trained, sampled and evaluated from the checkpoint alone; uint32 ids for large vocabularies;
batches aligned to documents."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import (TINY_MODEL, assert_one_line_error, needs_bpe, sample_text, varied_examples,
                      write_hellaswag)
from nanogpt.data import document_starts

TRAIN = ['--max_iters=6', '--eval_interval=6', *TINY_MODEL]


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
    result = run('eval.py', '--out_dir=out', '--device=cpu', '--text_file=val.txt', '--results_file=r.jsonl')
    rows = {(r['task'], r['metric']): r for r in map(json.loads, (tmp_path / 'r.jsonl').read_text().splitlines())}
    assert 'hellaswag' not in result.stdout  # a text was asked for, so only that
    # bits per byte counts every byte of the text once, whatever the tokens
    assert rows['text:val.txt', 'bpb']['value'] > 0 and rows['text:val.txt', 'loss']['examples'] > 0
    # asked for nothing, eval.py scores HellaSwag, in the model's own tokens
    write_hellaswag(tmp_path / 'hs.jsonl', varied_examples(5))
    run('eval.py', '--out_dir=out', '--device=cpu', '--hellaswag_file=hs.jsonl', '--results_file=hs.out')
    rows = {(r['task'], r['metric']): r for r in map(json.loads, (tmp_path / 'hs.out').read_text().splitlines())}
    assert rows['hellaswag', 'acc_norm']['examples'] == 5


def test_a_folder_of_documents_with_its_characters(run, tmp_path):
    corpus = tmp_path / 'stories'
    corpus.mkdir()
    for i in range(10):
        (corpus / f'{i}.txt').write_text(f'story {i}: ' + sample_text(3000)[i * 100:i * 100 + 2000], encoding='utf-8')
    out = run('data/prepare.py', '--input=stories', '--tokenizer=char', '--out_dir=data/stories').stdout
    assert '10 documents' in out and '1 for validation' in out
    meta = pickle.loads((tmp_path / 'data' / 'stories' / 'meta.pkl').read_bytes())
    val = np.fromfile(tmp_path / 'data' / 'stories' / 'val.bin', dtype=np.uint16)
    assert (val == meta['eot']).sum() == 1 and val[-1] == meta['eot']  # one whole document
    run('train.py', '--dataset=stories', '--out_dir=out', *TRAIN)
    assert run('sample.py', '--out_dir=out', '--device=cpu', '--start=story', '--num_samples=1',
               '--max_new_tokens=10').stdout.startswith('story')


@needs_bpe
def test_json_lines_with_gpt2_bpe(run, tmp_path):
    lines = [json.dumps({'body': sample_text(4000)[i * 300:i * 300 + 300]}) for i in range(8)]
    (tmp_path / 'docs.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    run('data/prepare.py', '--input=docs.jsonl', '--text_column=body', '--tokenizer=gpt2', '--val_fraction=0.25')
    folder = tmp_path / 'data' / 'docs'
    assert not (folder / 'meta.pkl').exists()  # GPT-2 BPE, as data/shakespeare/prepare.py writes it
    ids = np.fromfile(folder / 'train.bin', dtype=np.uint16)
    assert (ids == 50256).sum() == 6  # 8 documents, 2 of them for validation


def test_parquet_and_a_hugging_face_dataset_read_the_same_documents(run, tmp_path):
    pa, parquet = pytest.importorskip('pyarrow'), pytest.importorskip('pyarrow.parquet')
    texts = [f'document {i}: ' + sample_text(6000)[i * 500:i * 500 + 400] for i in range(12)]
    parquet.write_table(pa.table({'id': list(range(12)), 'story': texts}), tmp_path / 'docs.parquet')
    run('data/prepare.py', '--input=docs.parquet', '--text_column=story', '--tokenizer=char', '--out_dir=data/pq')
    # `datasets` reads a local folder as it would a dataset on the Hub
    (tmp_path / 'hub').mkdir()
    (tmp_path / 'hub' / 'train.jsonl').write_text(''.join(json.dumps({'story': t}) + '\n' for t in texts))
    out = run('data/prepare.py', '--input=hf:hub', '--text_column=story', '--tokenizer=char', '--out_dir=data/hf').stdout
    assert '12 documents, 1 for validation' in out
    for split in ('train', 'val'):
        assert (tmp_path / 'data' / 'pq' / f'{split}.bin').read_bytes() == \
            (tmp_path / 'data' / 'hf' / f'{split}.bin').read_bytes()
    assert_one_line_error(run('data/prepare.py', '--input=docs.parquet', '--text_column=text', expect=None),
                          "docs.parquet has no column 'text' (it has id, story)")
    assert_one_line_error(run('data/prepare.py', '--input=hf:nowhere/none', expect=None),
                          "cannot load the Hugging Face dataset 'nowhere/none'")


def test_processes_encode_exactly_as_one(run, tmp_path):
    (tmp_path / 'corpus.txt').write_text(sample_text(30_000), encoding='utf-8')
    for procs in (1, 2):
        run('data/prepare.py', '--input=corpus.txt', '--vocab_size=400', f'--num_proc={procs}', f'--out_dir=data/p{procs}')
    for name in ('train.bin', 'val.bin', 'tokenizer.json'):
        assert (tmp_path / 'data' / 'p1' / name).read_bytes() == (tmp_path / 'data' / 'p2' / name).read_bytes()


def test_a_vocabulary_past_uint16_is_stored_as_uint32(run, tmp_path):
    # 70,000 different characters: more ids than uint16 holds
    chars = [chr(c) for c in range(0x100, 0x100 + 72_100) if not 0xD800 <= c < 0xE000][:70_000]
    lines = [''.join(chars[i:i + 100]) for i in range(0, len(chars), 100)]
    (tmp_path / 'wide.txt').write_text('\n'.join(lines * 2) + '\n', encoding='utf-8')
    run('data/prepare.py', '--input=wide.txt', '--tokenizer=char')
    meta = pickle.loads((tmp_path / 'data' / 'wide' / 'meta.pkl').read_bytes())
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == 70_002  # and '\n', and end-of-text
    train = np.fromfile(tmp_path / 'data' / 'wide' / 'train.bin', dtype=np.uint32)
    assert train.max() == meta['eot'] == 70_001 and (train > 65_535).sum() > 1000
    run('train.py', '--dataset=wide', '--out_dir=out', *TRAIN, '--n_embd=8', '--n_head=1')
    run('eval.py', '--out_dir=out', '--device=cpu', '--dataset=wide', '--results_file=r.jsonl')
    rows = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    val = np.fromfile(tmp_path / 'data' / 'wide' / 'val.bin', dtype=np.uint32)
    assert rows[0]['examples'] == len(val) - 1  # read as uint32: every token once
    shutil.rmtree(tmp_path / 'data')
    sample = run('sample.py', '--out_dir=out', '--device=cpu', f'--start={chars[-1]}', '--num_samples=1',
                 '--max_new_tokens=5').stdout
    assert sample.startswith(chars[-1])


@pytest.mark.slow
def test_batches_of_documents_resume_exactly(run, tmp_path):
    lines = [json.dumps({'text': f'tale {i}. ' + sample_text(9000)[i * 300:i * 300 + 60 + 7 * i]}) for i in range(30)]
    (tmp_path / 'tales.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    run('data/prepare.py', '--input=tales.jsonl', '--tokenizer=char')
    meta = pickle.loads((tmp_path / 'data' / 'tales' / 'meta.pkl').read_bytes())
    train = np.fromfile(tmp_path / 'data' / 'tales' / 'train.bin', dtype=np.uint16)
    starts = document_starts(tmp_path / 'data' / 'tales' / 'train.bin', meta['eot'], block_size=16)
    assert starts[0] == 0 and (train[starts[1:] - 1] == meta['eot']).all() and len(starts) == 27  # 3 for val
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


def test_document_batches_need_documents(run, char_data):
    assert_one_line_error(run('train.py', '--dataset=tiny', '--batching=documents', *TRAIN, expect=None),
                          "batching='documents' needs documents, and data/tiny has no end-of-text token")
    assert_one_line_error(run('train.py', '--dataset=tiny', '--batching=books', *TRAIN, expect=None),
                          "batching must be 'random' or 'documents', not 'books'")


def test_preparing_over_a_dataset_of_another_tokenizer_is_refused(run, tmp_path):
    (tmp_path / 'corpus.txt').write_text(sample_text(5000), encoding='utf-8')
    run('data/prepare.py', '--input=corpus.txt', '--tokenizer=char')
    run('data/prepare.py', '--input=corpus.txt', '--tokenizer=char')  # the same again: fine
    before = (tmp_path / 'data' / 'corpus' / 'train.bin').read_bytes()
    assert_one_line_error(run('data/prepare.py', '--input=corpus.txt', '--vocab_size=300', expect=None),
                          'data/corpus already holds a dataset with another tokenizer (char)')
    assert (tmp_path / 'data' / 'corpus' / 'train.bin').read_bytes() == before


def test_bytes_that_are_not_utf8_can_be_replaced(run, tmp_path):
    (tmp_path / 'mixed.txt').write_bytes('caf\xe9 au lait\n'.encode('latin-1') * 50 + 'ok\n'.encode() * 20)
    run('data/prepare.py', '--input=mixed.txt', '--tokenizer=char', '--utf8_errors=replace')
    meta = pickle.loads((tmp_path / 'data' / 'mixed' / 'meta.pkl').read_bytes())
    assert '\ufffd' in meta['stoi']


def test_resuming_on_data_of_another_tokenizer_is_refused(run, tmp_path):
    (tmp_path / 'corpus.txt').write_text(sample_text(8000), encoding='utf-8')
    run('data/prepare.py', '--input=corpus.txt', '--tokenizer=bpe', '--vocab_size=280', '--out_dir=data/bpe')
    run('data/prepare.py', '--input=corpus.txt', '--tokenizer=char', '--out_dir=data/chars')
    run('train.py', '--dataset=bpe', '--out_dir=out', *TRAIN)
    assert_one_line_error(run('train.py', '--dataset=chars', '--out_dir=out', '--init_from=resume', *TRAIN[:1],
                              expect=None), 'trained with another tokenizer (bpe) than data/chars has (char)')


@pytest.mark.parametrize('setup, args, says', [
    (lambda p: (p / 'latin1.txt').write_bytes('caf\xe9 au lait'.encode('latin-1')), ['--input=latin1.txt'],
     'latin1.txt is not UTF-8 text: byte 3 is'),
    (lambda p: (p / 'l.jsonl').write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n'), ['--input=l.jsonl'],
     'l.jsonl is not UTF-8 text: byte 30 is'),
    (lambda p: (p / 'empty.txt').write_text(''), ['--input=empty.txt'], 'empty.txt holds no text'),
    (lambda p: (p / 'd.jsonl').write_text('{"text": "a"}\n{"body": "b"}\n'), ['--input=d.jsonl'],
     "d.jsonl line 2 has no text under 'text'"),
    (lambda p: (p / 'c.txt').write_text('abc'), ['--input=c.txt', '--vocab_size=100'], 'needs at least 261 tokens'),
    (lambda p: (p / 'c.txt').write_text('abc'), ['--input=c.txt', '--vocab_size=5000000000'],
     'uint32 token ids allow at most 4294967296'),
    (lambda p: (p / 'd.jsonl').write_text('{"text": "a"}\nnot json\n'), ['--input=d.jsonl'], 'd.jsonl line 2 is not JSON'),
    (lambda p: (p / 'one.jsonl').write_text('{"text": "just one"}\n'), ['--input=one.jsonl'],
     'validation got no text: the corpus is one document'),
    (lambda p: None, ['--input=missing.txt'], "input 'missing.txt' does not exist"),
])
def test_bad_corpora_are_one_line_errors(run, tmp_path, setup, args, says):
    setup(tmp_path)
    assert_one_line_error(run('data/prepare.py', *args, expect=None), 'prepare.py: error: ', says)
