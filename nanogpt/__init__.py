"""
The plumbing under the scripts at the top (train.py, sample.py, eval.py, bench.py, ...), one module
per concern; model.py, the math, imports none of it:

  runtime.py       the device, the dtype, compile, peak FLOP/s for MFU
  distributed.py   torchrun's process group, ranks that agree and stop together, FSDP
  checkpoints.py   checkpoint files, pretrained GPT-2 weights, random states
  data.py          train.bin/val.bin and meta.pkl; tokenizers; train.py's batches
  corpus.py        a corpus of your own read, split and encoded in bounded memory (data/prepare.py)
  chat.py          conversations as tokens: chat tokens, the assistant's mask, the history
  optimizers.py    AdamW's parameter groups, Muon
  evals.py         HellaSwag, loss and bits per byte on a text
  report.py        what a run prints and records; one-line errors for bad input
  cpu_linears.py   oneDNN's linears, switched in on CPUs where they are faster
"""
