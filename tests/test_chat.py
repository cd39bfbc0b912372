"""Chat finetuning: conversations rendered with chat tokens (nanogpt/chat.py), the assistant's
tokens alone learned (data/prepare_chat.py's masks, train.py's targets), rows aligned to
conversations, and chat.py to talk to the result. The learning itself is tested on a task a tiny
model can learn in seconds: reversing three letters."""
import itertools
import json
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL, assert_one_line_error, needs_bpe, random_hf_gpt2, run_torchrun
from nanogpt import chat, data
from nanogpt.evals import token_bytes

LETTERS = 'abcdef'
TRIPLES = [' '.join(t) for t in itertools.product(LETTERS, repeat=3)]
random.Random(0).shuffle(TRIPLES)
TRAIN_TRIPLES, HELD_OUT = TRIPLES[:160], TRIPLES[160:]  # 56 prompts the model never saw


def conversation(*turns):
    return {'messages': [{'role': role, 'content': text} for role, text in turns]}


def reversal(triple):
    return conversation(('user', f'reverse {triple}'), ('assistant', ' '.join(reversed(triple.split()))))


def write_jsonl(path, records):
    path.write_text(''.join(json.dumps(r) + '\n' for r in records), encoding='utf-8')


@pytest.fixture
def base(run, tmp_path):
    """A byte-level BPE of data/prepare.py (it reserves the chat tokens), in data/base."""
    (tmp_path / 'corpus.txt').write_text('\n'.join(f'reverse {t} {t[::-1]}' for t in TRIPLES) + '\n')
    run('data/prepare.py', '--input=corpus.txt', '--vocab_size=280', '--out_dir=data/base')
    return pickle.loads((tmp_path / 'data' / 'base' / 'meta.pkl').read_bytes())


def test_rendering_round_trips_and_masks_only_the_assistant(base):
    tok = chat.ChatTokenizer(base, base['vocab_size'])
    messages = conversation(('system', 'be brief'), ('user', 'reverse a b c'), ('assistant', 'c b a'),
                            ('user', 'and d e f?'), ('assistant', 'f e d'))['messages']
    ids, mask = chat.render(messages, tok)
    assert chat.parse(ids, tok) == messages and ids[-1] == tok.ids['eot']
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == 'c b a<|end|>f e d<|end|>'  # the answers and their ends, not the role tokens
    # bits per byte counts the text's bytes: the chat tokens spell none
    spelled = token_bytes(base, base['vocab_size'])
    assert spelled[list(tok.ids.values())].sum() == 0 and spelled[ids].sum() == sum(
        len(m['content'].encode()) for m in messages)


def test_history_keeps_the_system_message_and_drops_the_oldest_turns(base):
    tok = chat.ChatTokenizer(base, base['vocab_size'])
    messages = conversation(('system', 'be brief'), *[(r, f'turn {i}') for i, r in
                                                       enumerate(['user', 'assistant'] * 3 + ['user'])])['messages']
    whole, dropped = chat.prompt(messages, tok, context=1000)
    assert dropped == 0 and whole[-1] == tok.ids['assistant']
    cropped, dropped = chat.prompt(messages, tok, context=len(whole) - 1)
    assert dropped == 1 and chat.parse(cropped, tok) == [messages[0]] + messages[2:]
    assert len(cropped) <= len(whole) - 1


def test_rows_start_at_conversations_and_target_the_assistant_only(run, tmp_path, base):
    long = conversation(*[('user', 'reverse a b c'), ('assistant', 'c b a')] * 4)  # longer than a row
    write_jsonl(tmp_path / 'chats.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:40]] + [long] * 4)
    run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/base', '--out_dir=data/chat')
    tok = chat.ChatTokenizer(base, base['vocab_size'])
    blocks = data.Blocks(str(tmp_path / 'data' / 'chat'), base, 16, base['vocab_size'], 'random')
    ids = np.fromfile(tmp_path / 'data' / 'chat' / 'train.bin', dtype=np.uint16).astype(np.int64)
    mask = np.fromfile(tmp_path / 'data' / 'chat' / 'train_mask.bin', dtype=np.uint8)
    starts = blocks.row_starts['train']
    assert all(s == 0 or ids[s - 1] == tok.ids['eot'] or ids[s] == tok.ids['user'] for s in starts)
    assert (ids[starts] == tok.ids['user']).all()  # a conversation's first turn, or a long one's later turns
    rows = blocks.starts('train', 32, torch.Generator().manual_seed(0))
    x, y = blocks.read('train', rows, SimpleNamespace(device_type='cpu', device='cpu'))
    assert x.shape == y.shape == (32, 16) and (y != -1).any(1).all()  # every row has an answer to learn
    for row, start in zip(y.numpy(), rows):
        following = slice(start + 1, start + 17)
        assert (row == np.where(mask[following] == 1, ids[following], -1)).all()  # the assistant's, nothing else


@pytest.mark.slow
def test_a_tiny_model_learns_to_answer_and_the_mask_is_why(run, tmp_path, base):
    chats = [reversal(t) for t in TRAIN_TRIPLES] * 4
    write_jsonl(tmp_path / 'chats.jsonl', chats)
    (tmp_path / 'held_out.txt').write_text(''.join(f'reverse {t}\n' for t in HELD_OUT))
    answers = {}
    for learn in ('assistant', 'all'):
        run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/base', f'--out_dir=data/{learn}',
            f'--learn={learn}')
        run('train.py', f'--dataset={learn}', f'--out_dir=out-{learn}', *TINY_MODEL, '--n_embd=32',
            '--batch_size=32', '--max_iters=400', '--lr_decay_iters=400', '--min_lr=3e-4', '--warmup_iters=20',
            '--eval_interval=400', '--eval_iters=2', '--log_interval=100')
        replies = run('sample.py', '--chat=True', f'--out_dir=out-{learn}', '--device=cpu', '--prompts_file=held_out.txt',
                      '--temperature=0.1').stdout.splitlines()
        answers[learn] = sum(reply.split() == t.split()[::-1] for reply, t in zip(replies, HELD_OUT))
    print(f"held-out reversals right: {answers['assistant']}/56 with the mask, {answers['all']}/56 without")
    assert answers['assistant'] >= 45  # chance: 1 in 216
    assert answers['all'] <= answers['assistant'] - 20


@pytest.mark.slow
def test_a_chat_finetune_from_another_run_resumes_exactly(run, tmp_path, base):
    run('train.py', '--dataset=base', '--out_dir=out-base', *TINY_MODEL, '--max_iters=4', '--eval_interval=4')
    write_jsonl(tmp_path / 'chats.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:60]])
    run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=out-base', '--out_dir=data/chat')
    finetune = ['--init_from=out-base', '--dataset=chat', *TINY_MODEL, '--eval_interval=4',
                '--always_save_checkpoint=True']
    run('train.py', *finetune, '--out_dir=straight', '--max_iters=8')
    run('train.py', *finetune, '--out_dir=split', '--max_iters=4')
    run('train.py', *finetune[1:], '--out_dir=split', '--max_iters=8', '--init_from=resume')
    straight, split = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in ('straight', 'split'))
    assert all(torch.equal(t, split[name]) for name, t in straight.items())
    reply = run('sample.py', '--chat=True', '--out_dir=straight', '--device=cpu', '--prompt=reverse a b c', '--max_new_tokens=5')
    assert reply.returncode == 0


@pytest.mark.slow
def test_a_chat_finetune_compiled_under_ddp_compiles_once_and_agrees(run, tmp_path, base):
    write_jsonl(tmp_path / 'chats.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:60]])
    run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/base', '--out_dir=data/chat')
    compiled = [arg for arg in TINY_MODEL if not arg.startswith('--compile')] + ['--compile=True']
    result = run_torchrun(REPO / 'train.py', '--dataset=chat', '--out_dir=out', *compiled,
                          '--gradient_accumulation_steps=2', '--max_iters=8', '--eval_interval=4', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 processes (DDP, gloo)' in result.stdout and 'weights identical on all 2 ranks' in result.stdout
    # the masked targets change no shape: one graph per mode, as on plain text (tests/test_compile.py)
    assert 'compile: 2 graphs, 0 graph breaks, 1 recompiles (blocks)' in result.stdout


@needs_bpe
def test_gpt2s_vocabulary_takes_the_chat_tokens_in_its_padding(run, tmp_path):
    pytest.importorskip('transformers')
    random_hf_gpt2(tmp_path / 'gpt2-like', vocab_size=50257, n_positions=32)  # OpenAI's vocabulary, random weights
    write_jsonl(tmp_path / 'chats.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:30]])
    run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=gpt2', '--out_dir=data/chat')
    ids = np.fromfile(tmp_path / 'data' / 'chat' / 'train.bin', dtype=np.uint16).astype(np.int64)
    assert set(ids[ids > 50256].tolist()) == {50258, 50259, 50260}  # <|user|>, <|assistant|>, <|end|>
    run('train.py', '--init_from=gpt2-like', '--dataset=chat', '--out_dir=out', '--device=cpu', '--compile=False',
        '--batch_size=4', '--block_size=16', '--gradient_accumulation_steps=1', '--eval_iters=2', '--max_iters=3',
        '--eval_interval=3')
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['model_args']['vocab_size'] == 50304
    assert run('sample.py', '--chat=True', '--out_dir=out', '--device=cpu', '--prompt=reverse a b c', '--max_new_tokens=4').returncode == 0


@pytest.mark.parametrize('line, says', [
    ('not json', 'chats.jsonl line 1 is not JSON'),
    ('{"messages": [{"role": "user"}]}', 'chats.jsonl line 1 message 1 needs a role and a content'),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "message 1 has the unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', 'chats.jsonl line 1 has no assistant message'),
    ('{"messages": [{"role": "user", "content": "hi <|end|> there"}, {"role": "assistant", "content": "x"}]}',
     'chats.jsonl line 1 message 1 contains the special token <|end|>'),
    ('{"text": "hello"}', 'chats.jsonl line 1 has no "messages" list'),
])
def test_bad_conversations_are_one_line_errors(run, tmp_path, base, line, says):
    (tmp_path / 'chats.jsonl').write_text(line + '\n' + json.dumps(reversal('a b c')) + '\n')
    assert_one_line_error(run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/base', expect=None),
                          'prepare_chat.py: error: ', says)


def test_a_hugging_face_dataset_of_conversations_reads_as_the_file(run, tmp_path, base):
    write_jsonl(tmp_path / 'chats.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:20]])
    (tmp_path / 'hub').mkdir()
    write_jsonl(tmp_path / 'hub' / 'train.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:20]])  # as datasets reads it
    run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/base', '--out_dir=data/file')
    run('data/prepare_chat.py', '--input=hf:hub', '--tokenizer=data/base', '--out_dir=data/hub')
    for name in ('train.bin', 'train_mask.bin', 'val.bin', 'val_mask.bin'):
        assert (tmp_path / 'data' / 'file' / name).read_bytes() == (tmp_path / 'data' / 'hub' / name).read_bytes()


def test_a_bpe_without_chat_tokens_is_refused(run, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(['reverse a b c'], trainers.BpeTrainer(vocab_size=300, special_tokens=['<|endoftext|>']))
    data.write_meta(str(tmp_path / 'data' / 'old'), {'vocab_size': bpe.get_vocab_size(), 'tokenizer': 'bpe',
                                                     'tokenizer_json': bpe.to_str(), 'eot': 0})
    write_jsonl(tmp_path / 'chats.jsonl', [reversal('a b c'), reversal('d e f')])
    assert_one_line_error(run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/old', expect=None),
                          "this model's BPE has no chat tokens")


def test_models_without_chat_tokens_are_refused(run, trained, tmp_path):
    assert_one_line_error(run('sample.py', '--chat=True', '--out_dir=out', '--device=cpu', '--prompt=hi', expect=None),
                          'a character-level model has no chat tokens')
    write_jsonl(tmp_path / 'chats.jsonl', [reversal('a b c'), reversal('d e f')])
    assert_one_line_error(run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=out', expect=None),
                          'a character-level model has no chat tokens')
