"""Training on a train.bin of several GB never reads it into memory: train.py's checks and batches
(nanogpt.data.check_dataset and Blocks) read a batch at a time."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from nanogpt import runtime
from nanogpt.data import Blocks, check_dataset

CLEAR_REFS = Path('/proc/self/clear_refs')


def resident_peak_bytes():
    """This process's peak resident memory since it was last reset through CLEAR_REFS (Linux)."""
    status = Path('/proc/self/status').read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith('VmHWM:'))


@pytest.mark.skipif(not os.access(CLEAR_REFS, os.W_OK), reason="measures the peak resident memory through "
                                                                "Linux's /proc/self/clear_refs")
def test_multi_gb_train_bin_keeps_memory_bounded(tmp_path, char_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big = tmp_path / 'data' / 'big'
    big.mkdir()
    with open(big / 'train.bin', 'wb') as f:
        f.truncate(4 * 2**30)  # 4 GB, 2 billion tokens (a sparse file: no disk used, every token 0)
    for name in ('val.bin', 'meta.pkl'):
        shutil.copy(char_data / name, big / name)
    rt, generator = runtime.setup_runtime('cpu', 'float32', False), torch.Generator().manual_seed(0)
    CLEAR_REFS.write_text('5')  # the peak starts again from what is resident now
    before = resident_peak_bytes()
    meta = check_dataset('data/big', 'big')
    blocks = Blocks('data/big', meta, 16, meta['vocab_size'], 'random')
    assert blocks.unscanned == {'train'}  # too big to scan up front: each batch is checked instead
    for _ in range(300):  # as many batches as 300 iterations of train.py's tiny model, and its evaluations
        x, y = blocks.batch('train', 4, generator, rt)
        blocks.batch('val', 4, generator, rt)
    assert x.shape == y.shape == (4, 16) and not x.any()
    assert resident_peak_bytes() - before < 256 * 2**20  # reading it all would take 4 GB
