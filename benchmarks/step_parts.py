"""
Where a training step's time goes, classic recipe against modern: forward+backward, gradient
clipping and the optimizer (Muon and AdamW apart), each timed on its own inside one process, the
two models in alternation so that both see the same machine. The laptop recipe's shape by default.
With --versus=onednn the classic step with plain linears is set beside the same step with
oneDNN's: alternating step by step in one process is fair even where the machine's speed jumps
between runs.

$ python benchmarks/step_parts.py                                   # 4 layers, 128 wide, batch 12 x 64
$ python benchmarks/step_parts.py --muon_ns_steps=3 --rounds=80     # fewer Newton-Schulz iterations
$ python benchmarks/step_parts.py --versus=onednn --rounds=300      # what oneDNN's linears buy here

Figures are medians over the rounds after the first 5; the last column is the second step over
the first, and `step, round by round` the median of that ratio taken per round.
Random tokens: the time of a step does not depend on the data. One JSON line goes to results_file.
"""
import json
import os
import runpy
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from nanogpt import flops, optimizers, report, runtime  # noqa: E402
from nanogpt.cpu_linears import onednn_usable, use_onednn_linears  # noqa: E402
from configurator import configure  # noqa: E402
from model import GPT, MODERN_DEFAULTS, GPTConfig  # noqa: E402

n_layer, n_head, n_embd, block_size, vocab_size, batch_size = 4, 4, 128, 64, 65, 12
muon_ns_steps = 5
rounds = 50
onednn = 'auto'  # the linears of both steps (with --versus=modern)
versus = 'modern'  # the step set beside the classic one: 'modern' (config/modern.py) or 'onednn'
results_file = 'bench_results.jsonl'
configure(globals())

if versus not in ('modern', 'onednn'):
    report.fail(f"--versus takes modern or onednn, not {versus!r}")
if versus == 'onednn' and not onednn_usable('cpu', 'float32'):
    report.fail("--versus=onednn needs an x86-64 CPU and a torch built with oneDNN")
rt = runtime.setup_runtime('cpu', 'float32', False, onednn=False if versus == 'onednn' else onednn)
shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size, bias=False)
# the modern model is config/modern.py's, read from the file so that the two cannot drift apart
overlay = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config', 'modern.py'))
modern = {name: overlay[name] for name in MODERN_DEFAULTS if name in overlay}
# (name, model settings, optimizer, oneDNN linears on top of the runtime's)
if versus == 'modern':
    steps = [('classic', {}, 'adamw', False), ('modern', modern, overlay['optimizer'], False)]
else:
    steps = [('plain', {}, 'adamw', False), ('oneDNN', {}, 'adamw', True)]
recipes = {}
for name, choices, optimizer_name, onednn_linears in steps:
    torch.manual_seed(0)
    model = runtime.place_model(GPT(GPTConfig(**shape, **choices)), rt)
    if onednn_linears:
        use_onednn_linears(model)
    recipes[name] = (model, optimizers.configure(model, optimizer_name, 0.1, 1e-3, (0.9, 0.99), 'cpu',
                                                 overlay['muon_learning_rate'], muon_ns_steps=muon_ns_steps))
x, y = (torch.randint(vocab_size, (batch_size, block_size)) for _ in range(2))
parts = ('forward+backward', 'clip', 'Muon', 'AdamW', 'step')
times = {name: {part: [] for part in parts} for name in recipes}
for round_index in range(rounds + 5):
    for name, (model, optimizer) in recipes.items():
        marks = [time.perf_counter()]
        model(x, y)[1].backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        muon, adamw = (optimizer.muon, optimizer.adamw) if hasattr(optimizer, 'muon') else (None, optimizer)
        if muon is not None:
            muon.step()
        marks.append(time.perf_counter())
        adamw.step()
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        if round_index >= 5:
            for part, start, end in zip(parts, marks, marks[1:]):
                if part != 'Muon' or muon is not None:
                    times[name][part].append((end - start) * 1000)
            times[name]['step'].append((marks[-1] - marks[0]) * 1000)
# a part a recipe does not have (the classic step's Muon) has no times, and no median
medians = {name: {part: statistics.median(values) for part, values in by_part.items() if values}
           for name, by_part in times.items()}
first, second = recipes
per_round = statistics.median(b / a for a, b in zip(times[first]['step'], times[second]['step']))
linears = runtime.describe_linears(rt) if versus == 'modern' else ''  # with --versus=onednn the table says
print(f"{flops.cpu_name()}, {torch.get_num_threads()} threads{linears}; {n_layer} layers, {n_embd} wide, "
      f"batch {batch_size} x {block_size}, Muon with {muon_ns_steps} Newton-Schulz iterations")
print(f"| part | {first} ms | {second} ms | {second} / {first} |\n| --- | --- | --- | --- |")
for part in parts:
    a, b = medians[first].get(part), medians[second].get(part)
    if b is not None:
        print(f"| {part} | {a:.2f} | {b:.2f} | {b / a:.2f}x |" if a is not None else f"| {part} | - | {b:.2f} | |")
print(f"| step, round by round | | | {per_round:.3f}x |")
with open(results_file, 'a') as f:
    f.write(json.dumps({'bench': 'step_parts', 'cpu': flops.cpu_name(), 'threads': torch.get_num_threads(),
                        'versus': versus, 'onednn': rt.onednn, 'shape': shape, 'batch_size': batch_size,
                        'muon_ns_steps': muon_ns_steps, 'rounds': rounds, 'medians_ms': medians,
                        'step_ratio_per_round': per_round}) + '\n')
