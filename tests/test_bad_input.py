"""Every kind of bad input stops with one clear line on stderr and exit status 2, losing nothing.
(Mistakes in settings themselves are in test_configurator.py; DDP ones in test_ddp.py.)"""
import pickle

import numpy as np
import torch

from conftest import TINY_MODEL, assert_one_line_error, read_metrics


def train(run, *args):
    return run('train.py', '--dataset=tiny', *TINY_MODEL, '--max_iters=2', *args, expect=None)


def test_dataset_not_prepared(run, tmp_path):
    (tmp_path / 'data' / 'empty').mkdir(parents=True)
    assert_one_line_error(run('train.py', '--dataset=empty', *TINY_MODEL, expect=None),
                          'data/empty/train.bin is missing, the dataset is not prepared')


def test_bin_shorter_than_a_block(run, char_data):
    np.arange(10, dtype=np.uint16).tofile(char_data / 'val.bin')
    assert_one_line_error(train(run), 'val.bin holds 10 tokens, fewer than block_size + 1 = 17')


def test_tokens_beyond_the_vocabulary(run, char_data):
    meta = pickle.loads((char_data / 'meta.pkl').read_bytes())
    np.full(100, meta['vocab_size'] + 5, dtype=np.uint16).tofile(char_data / 'val.bin')
    assert_one_line_error(train(run), 'val.bin has token ids >= the model\'s vocab_size')


def test_n_embd_not_divisible_by_n_head(run, char_data):
    assert_one_line_error(train(run, '--n_embd=30', '--n_head=4'), 'n_embd (30) must be divisible by n_head (4)')


def test_unknown_dtype_and_device(run, char_data):
    assert_one_line_error(train(run, '--dtype=float8'), "unknown dtype 'float8'")
    assert_one_line_error(train(run, '--device=tpu'), "device 'tpu'")


def test_out_dir_not_writable(run, char_data, tmp_path):
    (tmp_path / 'a_file').write_text('not a folder')
    assert_one_line_error(train(run, '--out_dir=a_file/run'), 'out_dir a_file/run is not writable')


def test_resume_without_a_checkpoint(run, char_data):
    assert_one_line_error(train(run, '--init_from=resume', '--out_dir=empty'), 'no checkpoint at empty/ckpt.pt')


def test_truncated_checkpoint(run, trained):
    good = (trained / 'ckpt.pt').read_bytes()
    (trained / 'ckpt.pt').write_bytes(good[:len(good) // 2])
    message = 'out/ckpt.pt is not a readable checkpoint'
    assert_one_line_error(run('train.py', '--dataset=tiny', '--init_from=resume', expect=None), message)
    assert_one_line_error(run('sample.py', '--out_dir=out', expect=None), message)


def test_foreign_checkpoints(run, trained):
    model = torch.load(trained / 'ckpt.pt', weights_only=True)['model']
    torch.save(model, trained / 'ckpt.pt')  # a bare state_dict, as other programs save them
    assert_one_line_error(run('sample.py', '--out_dir=out', expect=None), 'not a nanoGPT checkpoint')
    (trained / 'ckpt.pt').write_bytes(pickle.dumps(ValueError('not torch at all')))
    assert_one_line_error(run('train.py', '--dataset=tiny', '--init_from=resume', expect=None),
                          'not a readable checkpoint')


def test_checkpoint_vocabulary_differs_from_dataset(run, trained, tmp_path):
    (tmp_path / 'other.txt').write_text('abc ' * 500)
    run('data/shakespeare_char/prepare.py', '--input_file=other.txt', '--out_dir=data/other')
    before = (trained / 'ckpt.pt').read_bytes()
    assert_one_line_error(run('train.py', '--dataset=other', '--init_from=resume', expect=None),
                          "differs from data/other/meta.pkl (4)")
    assert (trained / 'ckpt.pt').read_bytes() == before  # nothing lost


def test_block_size_larger_than_the_checkpoint(run, trained):
    assert_one_line_error(run('train.py', '--dataset=tiny', '--init_from=resume', '--block_size=32', expect=None),
                          'cannot resume with block_size=32: the checkpoint in out has block_size=16')


def test_relu_squared_in_float16_is_refused(run, char_data):
    # relu(x)^2 overflows float16 past x = 256: refused up front rather than "diverged" mid-run
    result = run('train.py', '--dataset=tiny', *TINY_MODEL, '--mlp=relu2', '--dtype=float16', '--max_iters=2', expect=None)
    assert_one_line_error(result, "mlp='relu2' overflows float16", '--dtype=bfloat16')


def test_a_resume_keeps_one_done_record_its_own(run, trained):
    run('train.py', '--dataset=tiny', '--out_dir=out', *TINY_MODEL, '--max_iters=40', '--eval_interval=10',
        '--init_from=resume')
    done = [e for e in read_metrics(trained) if e['event'] == 'done']
    assert [e['iter'] for e in done] == [40]  # not also the first run's, at 30
