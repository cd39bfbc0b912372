"""Training on a train.bin of several GB never reads it into memory."""
import re
import shutil

from conftest import TINY_MODEL


def test_multi_gb_train_bin_keeps_memory_bounded(run, tmp_path, char_data):
    big = tmp_path / 'data' / 'big'
    big.mkdir()
    with open(big / 'train.bin', 'wb') as f:
        f.truncate(4 * 2**30)  # 4 GB, 2 billion tokens (a sparse file: no disk used, every token 0)
    for name in ('val.bin', 'meta.pkl'):
        shutil.copy(char_data / name, big / name)
    out = run('train.py', '--dataset=big', *TINY_MODEL, '--max_iters=300', '--eval_interval=100',
              '--log_interval=100').stdout
    peak_gb = float(re.search(r'peak memory ([\d.]+) GB', out).group(1))
    assert peak_gb < 1.5, out
