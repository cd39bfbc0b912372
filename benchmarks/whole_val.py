"""
The loss of a run's checkpoint on the whole val set: every block_size-token block of val.bin once,
the same blocks for every run, so that runs (ours, the original's, ablations) compare exactly where
the 20-batch estimates they log would not.
"""
import os

import numpy as np
import torch

from nanogpt import checkpoints, data


def whole_val_loss(out_dir, data_dir, block_size=64, blocks_per_batch=256):
    """Mean cross-entropy of out_dir/ckpt.pt over every block of data_dir/val.bin (None when a run
    too short to evaluate saved nothing)."""
    path = os.path.join(out_dir, checkpoints.CKPT_NAME)
    if not os.path.exists(path):
        return None
    model = checkpoints.model_from_checkpoint(checkpoints.load_checkpoint(path), path).eval()
    dtype = data.token_dtype(data.read_meta(os.path.join(data_dir, 'meta.pkl')))
    val = np.fromfile(os.path.join(data_dir, 'val.bin'), dtype=dtype).astype(np.int64)
    n_blocks = (len(val) - 1) // block_size
    inputs = torch.from_numpy(val[:n_blocks * block_size]).view(n_blocks, block_size)
    targets = torch.from_numpy(val[1:n_blocks * block_size + 1]).view(n_blocks, block_size)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n_blocks, blocks_per_batch):
            batch = slice(i, i + blocks_per_batch)
            _, loss = model(inputs[batch], targets[batch])
            total += loss.item() * len(inputs[batch])
    return round(total / n_blocks, 4)
