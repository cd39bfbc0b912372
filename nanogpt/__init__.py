"""
The plumbing under the scripts at the top (train.py, sample.py, eval.py, bench.py, ...), one module
per concern, listed in README.md ("Files"). Each imports only modules listed above it there, so the
imports form a stack; model.py, the math, imports none of it.
"""
