"""
train.py's settings that can be checked before anything is built: each mistake one line, at once.
"""
from nanogpt.report import fail

AT_LEAST_ONE = ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters', 'log_interval',
                'dist_timeout')
NOT_NEGATIVE = ('max_iters', 'learning_rate', 'min_lr', 'warmup_iters', 'hellaswag_interval')


def check_training(config):
    """A one-line error for a setting train.py cannot run with (config: its settings by name)."""
    for name in AT_LEAST_ONE:
        if config[name] < 1:
            fail(f"--{name} must be at least 1, not {config[name]}")
    if any(config[name] < 0 for name in NOT_NEGATIVE):
        fail(f"{', '.join(NOT_NEGATIVE[:-1])} and {NOT_NEGATIVE[-1]} cannot be negative")
    if config['fsdp'] and config['hellaswag_interval']:
        # each rank scores its own share, but FSDP's forward needs every rank at once
        fail("hellaswag_interval does not run under --fsdp=True yet; score the checkpoints with eval.py")


def check_world_size(gradient_accumulation_steps, world_size, fsdp):
    """The micro-steps of an optimizer step are shared out among the processes: evenly, or not at all."""
    if gradient_accumulation_steps % world_size:
        fail(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the "
             f"number of {'FSDP' if fsdp else 'DDP'} processes ({world_size}); change one of them")
