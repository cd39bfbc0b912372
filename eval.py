"""
Evaluate a model: HellaSwag accuracy, and held-out loss and bits per byte of a text.

$ python eval.py --init_from=gpt2                              # HellaSwag (10,042 examples), downloaded once
$ python eval.py --out_dir=out                                 # a checkpoint of ours (out/ckpt.pt)
$ python eval.py --init_from=gpt2 --text_file=input.txt        # loss and bits per byte of a text file (only)
$ python eval.py --out_dir=out --dataset=fineweb --hellaswag=False   # loss and bits per byte of data/fineweb/val.bin
$ torchrun --standalone --nproc_per_node=8 eval.py --init_from=gpt2-xl   # split across GPUs

Prints a table and appends one JSON line per number to results_file (model, task, metric, value,
examples, seconds, ...). HellaSwag is scored completion-style as build-nanogpt and llm.c do
(nanogpt/evals.py says how), so its numbers compare with theirs and with OpenAI's GPT-2 (124M: acc 0.2859,
acc_norm 0.2955; 1558M: 0.3842 / 0.4893). Bits per byte compare across tokenizers and datasets.
"""
import json
import sys
import time

import torch

from nanogpt import distributed, evals, models, report, runtime
from configurator import configure

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' reads out_dir/ckpt.pt; or 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a Hugging Face folder
out_dir = 'out'  # where the checkpoint is (for init_from='resume')
hellaswag = 'auto'  # HellaSwag: 'auto' runs it when neither text_file nor dataset is given; True, False
hellaswag_file = ''  # '' means data/hellaswag/hellaswag_val.jsonl, downloaded once
max_examples = 0  # HellaSwag: the first this many examples only; 0 for all
details_file = ''  # HellaSwag: write every example's per-ending losses and choices here (JSON lines)
text_file = ''  # loss and bits per byte of this UTF-8 text file
dataset = ''  # loss and bits per byte of data/<dataset>/val.bin
stride = 0  # sliding window step in tokens for texts longer than block_size; 0 means block_size // 2
max_tokens = 0  # text_file / dataset: the first this many tokens only; 0 for all
batch_size = 8  # HellaSwag examples (4 rows each), or windows of text, per forward pass
results_file = 'eval_results.jsonl'  # one JSON line per number is appended here; '' for none
seed = 1337
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 on CUDA where supported, else float16; float32 elsewhere), 'float32', 'bfloat16', 'float16'
compile = False  # torch.compile the model: the shapes change from batch to batch, so eager is usually faster
onednn = 'auto'  # CPU, float32: Linear layers in oneDNN (see train.py)
backend = 'auto'  # DDP backend under torchrun: nccl on CUDA, gloo on the CPU
# -----------------------------------------------------------------------------
configure(globals())

if batch_size < 1 or max_examples < 0 or max_tokens < 0 or stride < 0:
    report.fail("--batch_size must be at least 1, and --max_examples, --max_tokens and --stride at least 0")
if hellaswag not in (True, False, 'auto'):
    report.fail(f"--hellaswag takes auto, True or False, not {hellaswag!r}")
rt = runtime.setup_runtime(device, dtype, compile, backend, seed, onednn)
model, meta, model_name = models.inference_model(init_from, out_dir)
vocab_size, block_size = model.config.vocab_size, model.config.block_size
run_hellaswag = evals.runs_hellaswag(hellaswag, text_file, dataset)
# the data first, so that a mistake in it shows before the model is placed and timed
examples = evals.load_hellaswag(hellaswag_file, rt, meta, vocab_size, max_examples) if run_hellaswag else None
texts = []  # (task name, token ids)
if text_file:
    texts.append((f"text:{text_file}", evals.text_tokens(text_file, meta, max_tokens)))
if dataset:
    texts.append((f"val:{dataset}", evals.val_tokens(dataset, meta, vocab_size, max_tokens)))
bytes_per_token = evals.token_bytes(meta, vocab_size) if texts else None

runtime.place_model(model, rt)
if rt.compile:
    # the Transformer, for any batch shape; the head runs on the scored positions alone (a
    # data-dependent shape, which would break the graph)
    model.hidden_states = torch.compile(model.hidden_states, dynamic=True)
if rt.master:
    print(f"{model_name}: {model.get_num_params() / 1e6:.2f}M parameters, context {block_size}; device {rt.device}, "
          f"dtype {rt.dtype}, {runtime.describe_processes(rt)}{runtime.describe_linears(rt)}", flush=True)

results = []  # dicts for the JSON lines


def record(task, metric, value, examples, seconds, **extra):
    results.append(dict(model=model_name, task=task, metric=metric, value=value, examples=examples,
                        seconds=round(seconds, 3), examples_per_s=round(examples / seconds, 3) if seconds else None,
                        **extra))


if examples is not None:
    scores = evals.hellaswag(model, examples, rt, batch_size, details=bool(details_file), progress=True)
    for metric, correct in (('acc', 'correct'), ('acc_norm', 'correct_norm')):
        record('hellaswag', metric, scores[metric], scores['examples'], scores['seconds'], correct=scores[correct])
    if details_file and rt.master:
        with open(details_file, 'w') as f:
            f.writelines(json.dumps(d) + '\n' for d in scores['details'])
for task, tokens in texts:
    measured = evals.text_loss(model, tokens, bytes_per_token, rt, stride, batch_size, progress=True)
    for metric in ('loss', 'bpb'):
        record(task, metric, measured[metric], measured['tokens'], measured['seconds'],
               bytes=measured['bytes'], stride=measured['stride'], block_size=block_size)

if rt.master:
    header = ('task', 'metric', 'value', 'examples', 'seconds', 'examples/s')
    table = [header] + [(r['task'], r['metric'], f"{r['value']:.4f}", f"{r['examples']:,}", f"{r['seconds']:.1f}",
                         f"{r['examples_per_s']:,.1f}" if r['examples_per_s'] else '-') for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"model: {model_name}")
    for row in table:
        print('  '.join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if examples is not None:
        print("HellaSwag references (acc / acc_norm): " +
              ', '.join(f"OpenAI {name} {acc:.4f} / {norm:.4f}" for name, (acc, norm) in evals.GPT2_HELLASWAG.items()) +
              "; random guessing 0.25")
    if results_file:
        now = round(time.time(), 3)
        with open(results_file, 'a') as f:
            f.writelines(json.dumps({**r, 'time': now}) + '\n' for r in results)
        print(f"appended {len(results)} lines to {results_file}" +
              (f"; per-example losses in {details_file}" if details_file else ''))
    if rt.compile:  # a recompile per batch shape would cost more than compiling saves
        print(runtime.describe_compile(), file=sys.stderr)
distributed.leave_group(rt)
