"""Chat finetuning: conversations rendered with chat tokens (nanogpt/chat.py), the assistant's
tokens alone learned (data/prepare_chat.py's masks, train.py's targets), rows aligned to
conversations, and sample.py --chat to talk to the result. The learning itself is tested on a task a
tiny model can learn in seconds: reversing three letters."""
import itertools
import json
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL, assert_one_line_error, needs_bpe, run_torchrun
from made_up import random_hf_gpt2
from nanogpt import chat, corpus, data, models, runtime
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


def chat_dataset(records, tmp_path, name, tokenizer, learn='assistant'):
    """What `data/prepare_chat.py --input=chats.jsonl --tokenizer=... --out_dir=data/<name>` writes,
    in this process: records saved as chats.jsonl, read back and rendered into tmp_path/data/<name>."""
    write_jsonl(tmp_path / 'chats.jsonl', records)
    conversations = chat.read_input(str(tmp_path / 'chats.jsonl'))
    meta, vocab_size = chat.tokenizer_of(tokenizer)
    chat.write_dataset(conversations, chat.ChatTokenizer(meta, vocab_size), meta, str(tmp_path / 'data' / name),
                       learn)
    return tmp_path / 'data' / name


def replies(out_dir, questions, max_new_tokens, **sampling):
    """What `sample.py --chat=True --out_dir=... --prompts_file=...` answers, in this process: each
    question a conversation of its own, on the CPU."""
    rt = runtime.setup_runtime('cpu', 'float32', False, onednn=False)
    model, meta, _ = models.inference_model('resume', str(out_dir))
    tok = chat.ChatTokenizer(meta, model.config.vocab_size)
    return [chat.reply(model.eval(), tok, [{'role': 'user', 'content': question}], max_new_tokens, rt, **sampling)
            for question in questions]


@pytest.fixture(scope='session')  # not module: see tests/test_train.py's high_lr_run
def _base(tmp_path_factory):
    folder = tmp_path_factory.mktemp('base')
    (folder / 'corpus.txt').write_text('\n'.join(f'reverse {t} {t[::-1]}' for t in TRIPLES) + '\n')
    return corpus.prepare(str(folder / 'corpus.txt'), str(folder / 'base'), vocab_size=280)


@pytest.fixture
def base(tmp_path, _base):
    """A byte-level BPE of data/prepare.py (it reserves the chat tokens), in data/base: its meta.pkl."""
    shutil.copytree(_base, tmp_path / 'data' / 'base')
    return data.read_meta(str(tmp_path / 'data' / 'base' / 'meta.pkl'))


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


def test_rows_start_at_conversations_and_target_the_assistant_only(tmp_path, base):
    long = conversation(*[('user', 'reverse a b c'), ('assistant', 'c b a')] * 4)  # longer than a row
    folder = chat_dataset([reversal(t) for t in TRAIN_TRIPLES[:40]] + [long] * 4, tmp_path, 'chat',
                          str(tmp_path / 'data' / 'base'))
    tok = chat.ChatTokenizer(base, base['vocab_size'])
    blocks = data.Blocks(str(folder), base, 16, base['vocab_size'], 'random')
    ids = np.fromfile(folder / 'train.bin', dtype=np.uint16).astype(np.int64)
    mask = np.fromfile(folder / 'train_mask.bin', dtype=np.uint8)
    starts = blocks.row_starts['train']
    assert all(s == 0 or ids[s - 1] == tok.ids['eot'] or ids[s] == tok.ids['user'] for s in starts)
    assert (ids[starts] == tok.ids['user']).all()  # a conversation's first turn, or a long one's later turns
    rows = blocks.starts('train', 32, torch.Generator().manual_seed(0))
    x, y = blocks.read('train', rows, SimpleNamespace(device_type='cpu', device='cpu'))
    assert x.shape == y.shape == (32, 16) and (y != -1).any(1).all()  # every row has an answer to learn
    for row, start in zip(y.numpy(), rows):
        following = slice(start + 1, start + 17)
        assert (row == np.where(mask[following] == 1, ids[following], -1)).all()  # the assistant's, nothing else
    assert data.read_meta(str(folder / 'meta.pkl')) == base  # the tokenizer travels with the data


@pytest.mark.slow
def test_a_tiny_model_learns_to_answer_and_the_mask_is_why(run, tmp_path, base):
    chats = [reversal(t) for t in TRAIN_TRIPLES] * 4
    (tmp_path / 'held_out.txt').write_text(''.join(f'reverse {t}\n' for t in HELD_OUT))
    training = [*TINY_MODEL, '--n_embd=32', '--batch_size=32', '--max_iters=400', '--lr_decay_iters=400',
                '--min_lr=3e-4', '--warmup_iters=20', '--eval_interval=400', '--eval_iters=2', '--log_interval=100']
    # with the mask, as a user does it: the three scripts
    write_jsonl(tmp_path / 'chats.jsonl', chats)
    run('data/prepare_chat.py', '--input=chats.jsonl', '--tokenizer=data/base', '--out_dir=data/assistant')
    run('train.py', '--dataset=assistant', '--out_dir=out-assistant', *training)
    answers = run('sample.py', '--chat=True', '--out_dir=out-assistant', '--device=cpu', '--prompts_file=held_out.txt',
                  '--temperature=0.1').stdout.splitlines()
    with_mask = sum(reply.split() == t.split()[::-1] for reply, t in zip(answers, HELD_OUT))
    # without it (every token learned); a right answer is 3 tokens and <|end|>, so 8 new tokens tell
    chat_dataset(chats, tmp_path, 'all', str(tmp_path / 'data' / 'base'), learn='all')
    run('train.py', '--dataset=all', '--out_dir=out-all', *training)
    answers = replies(tmp_path / 'out-all', [f'reverse {t}' for t in HELD_OUT], 8, temperature=0.1, top_k=200)
    without_mask = sum(reply.split() == t.split()[::-1] for reply, t in zip(answers, HELD_OUT))
    print(f"held-out reversals right: {with_mask}/56 with the mask, {without_mask}/56 without")
    assert with_mask >= 45  # chance: 1 in 216
    assert without_mask <= with_mask - 20


@pytest.mark.slow
def test_a_chat_finetune_from_another_run_resumes_exactly(run, tmp_path, base):
    run('train.py', '--dataset=base', '--out_dir=out-base', *TINY_MODEL, '--max_iters=4', '--eval_interval=4')
    chat_dataset([reversal(t) for t in TRAIN_TRIPLES[:60]], tmp_path, 'chat', str(tmp_path / 'out-base'))
    finetune = ['--init_from=out-base', '--dataset=chat', *TINY_MODEL, '--eval_interval=4',
                '--always_save_checkpoint=True']
    run('train.py', *finetune, '--out_dir=straight', '--max_iters=8')
    run('train.py', *finetune, '--out_dir=split', '--max_iters=4')
    run('train.py', *finetune[1:], '--out_dir=split', '--max_iters=8', '--init_from=resume')
    straight, split = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in ('straight', 'split'))
    assert all(torch.equal(t, split[name]) for name, t in straight.items())
    [reply] = replies(tmp_path / 'straight', ['reverse a b c'], max_new_tokens=5)
    assert isinstance(reply, str)


@pytest.mark.slow
def test_a_chat_finetune_compiled_under_ddp_compiles_once_never_waits_and_agrees(tmp_path, base):
    # tests/test_compile.py's case of DDP with compile_scope=auto (blocks under torchrun), on masked targets:
    # several evaluations and log lines, each switch between the modes reusing the graphs compiled first
    chat_dataset([reversal(t) for t in TRAIN_TRIPLES[:60]], tmp_path, 'chat', str(tmp_path / 'data' / 'base'))
    compiled = [arg for arg in TINY_MODEL if not arg.startswith('--compile')] + ['--compile=True']
    result = run_torchrun(REPO / 'benchmarks' / 'count_syncs.py', REPO / 'train.py', '--dataset=chat', '--out_dir=out',
                          *compiled, '--gradient_accumulation_steps=2', '--max_iters=12', '--eval_interval=4',
                          '--log_interval=2', '--compile_scope=auto', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 processes (DDP, gloo)' in result.stdout and 'weights identical on all 2 ranks' in result.stdout
    assert result.stderr.count('host syncs: 0 inside the training step') == 2  # each rank
    # the masked targets change no shape: one graph per mode, as on plain text; the hooks stay outside the compiled code
    assert 'compile: 2 graphs, 0 graph breaks, 1 recompiles (blocks)' in result.stdout


@needs_bpe
def test_gpt2s_vocabulary_takes_the_chat_tokens_in_its_padding(run, tmp_path):
    pytest.importorskip('transformers')
    random_hf_gpt2(tmp_path / 'gpt2-like', vocab_size=50257, n_positions=32)  # OpenAI's vocabulary, random weights
    folder = chat_dataset([reversal(t) for t in TRAIN_TRIPLES[:30]], tmp_path, 'chat', 'gpt2')
    ids = np.fromfile(folder / 'train.bin', dtype=np.uint16).astype(np.int64)
    assert set(ids[ids > 50256].tolist()) == {50258, 50259, 50260}  # <|user|>, <|assistant|>, <|end|>
    assert not (folder / 'meta.pkl').exists()  # GPT-2 BPE, as the datasets of data/shakespeare/prepare.py
    run('train.py', '--init_from=gpt2-like', '--dataset=chat', '--out_dir=out', '--device=cpu', '--compile=False',
        '--batch_size=4', '--block_size=16', '--gradient_accumulation_steps=1', '--eval_iters=2', '--max_iters=3',
        '--eval_interval=3')
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['model_args']['vocab_size'] == 50304
    [reply] = replies(tmp_path / 'out', ['reverse a b c'], max_new_tokens=4)
    assert isinstance(reply, str)


@pytest.mark.parametrize('line, says', [
    ('not json', 'chats.jsonl line 1 is not JSON'),
    ('{"messages": [{"role": "user"}]}', 'chats.jsonl line 1 message 1 needs a role and a content'),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "message 1 has the unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', 'chats.jsonl line 1 has no assistant message'),
    ('{"messages": [{"role": "user", "content": "hi <|end|> there"}, {"role": "assistant", "content": "x"}]}',
     'chats.jsonl line 1 message 1 contains the special token <|end|>'),
    ('{"text": "hello"}', 'chats.jsonl line 1 has no "messages" list'),
])
def test_bad_conversations_are_one_line_errors(refused, tmp_path, monkeypatch, line, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'chats.jsonl').write_text(line + '\n' + json.dumps(reversal('a b c')) + '\n')
    with refused(says):
        chat.read_input('chats.jsonl')


def test_prepare_chat_stops_at_bad_input_with_one_line(run, tmp_path):
    (tmp_path / 'chats.jsonl').write_text('not json\n')
    assert_one_line_error(run('data/prepare_chat.py', '--input=chats.jsonl', expect=None),
                          'prepare_chat.py: error: chats.jsonl line 1 is not JSON')


def test_a_hugging_face_dataset_of_conversations_reads_as_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / 'chats.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:20]])
    (tmp_path / 'hub').mkdir()
    write_jsonl(tmp_path / 'hub' / 'train.jsonl', [reversal(t) for t in TRAIN_TRIPLES[:20]])  # as datasets reads it
    from_the_hub = chat.read_input('hf:hub', 'train')
    assert from_the_hub == chat.read_input('chats.jsonl') and len(from_the_hub) == 20


def test_a_bpe_without_chat_tokens_is_refused(refused, tmp_path):
    import tokenizers
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(['reverse a b c'], tokenizers.trainers.BpeTrainer(vocab_size=300,
                                                                             special_tokens=['<|endoftext|>']))
    data.write_meta(str(tmp_path / 'data' / 'old'), {'vocab_size': bpe.get_vocab_size(), 'tokenizer': 'bpe',
                                                     'tokenizer_json': bpe.to_str(), 'eot': 0})
    meta, vocab_size = chat.tokenizer_of(str(tmp_path / 'data' / 'old'))
    with refused("this model's BPE has no chat tokens"):
        chat.ChatTokenizer(meta, vocab_size)


def test_models_without_chat_tokens_are_refused(refused, trained):
    # sample.py --chat, and data/prepare_chat.py --tokenizer=out: a character-level run's model
    model, meta, _ = models.inference_model('resume', str(trained))
    with refused('a character-level model has no chat tokens'):
        chat.ChatTokenizer(meta, model.config.vocab_size)
    meta, vocab_size = chat.tokenizer_of(str(trained))
    with refused('a character-level model has no chat tokens'):
        chat.ChatTokenizer(meta, vocab_size)
