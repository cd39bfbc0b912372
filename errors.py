"""
Bad input is not a bug: every script reports it the same way, in one line, and exits with status 2.
"""
import os
import sys


def fail(message, every_rank=False):
    """Bad input, not a bug: say what to do in one line on stderr and exit with status 2.
    Under DDP every rank finds the same mistake, so only rank 0 says it, unless the
    mistake is one rank's own (every_rank)."""
    rank = int(os.environ.get('RANK', 0))
    if rank == 0 or every_rank:
        prefix = f"[rank {rank}] " if rank else ''
        print(f"{prefix}{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
