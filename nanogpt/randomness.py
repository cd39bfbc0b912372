"""
Every random state that drives batches and dropout, saved and restored so that a resume is exact.
"""
import random

import numpy as np
import torch


def rng_state():
    """Every random state that drives batches and dropout, to make a resume exact. Plain
    lists and tensors only, so checkpoints load with torch.load(weights_only=True)."""
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
        'torch': torch.get_rng_state(),
        # this process's GPU only: asking for every GPU's state would open a context on each of them
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state):
    random.setstate(state['python'])
    kind, key, *rest = state['numpy']
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state['torch'].cpu())
    if isinstance(state['cuda'], torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())
