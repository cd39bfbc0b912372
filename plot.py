"""
Plot a run's loss curves from out_dir/metrics.jsonl to a PNG.

$ python plot.py --out_dir=out-shakespeare-char                   # writes out-shakespeare-char/loss.png
$ python plot.py --out_dir=out-a,out-b --png=compare.png          # several runs on one plot

Training loss at every logged iteration (faint), and train and val loss at every evaluation; for
runs with hellaswag_interval, HellaSwag acc_norm (and acc, dashed) in a second panel below, with
OpenAI's GPT-2 124M (acc_norm 0.2955) as a dotted line.
Needs matplotlib (pip install matplotlib), which nothing else in the repo does.
"""
import json
import os

from nanogpt import report
from configurator import configure

out_dir = 'out'  # the run to plot; several, comma-separated, share one plot
png = ''  # where the picture goes; '' means loss.png in the (first) out_dir
title = ''  # '' means the run names
configure(globals())

try:
    import matplotlib
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt
except ImportError:
    report.fail("plotting needs matplotlib: pip install matplotlib")

runs = [d for d in out_dir.split(',') if d]
run_events = []
for run in runs:
    path = os.path.join(run, 'metrics.jsonl')
    try:
        run_events.append(report.read_metrics(run))
    except (OSError, json.JSONDecodeError) as e:
        report.fail(f"cannot read {path} ({type(e).__name__}): train.py writes it, so train first or fix --out_dir")
    if not run_events[-1]:
        report.fail(f"{path} is empty: the run has logged nothing yet")
with_hellaswag = any(e['event'] == 'hellaswag' for events in run_events for e in events)
if with_hellaswag:
    fig, (ax, hs_ax) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, gridspec_kw=dict(height_ratios=(3, 2)))
else:
    fig, ax = plt.subplots(figsize=(9, 5))
for i, (run, events) in enumerate(zip(runs, run_events)):
    color = f'C{i}'
    label = run if len(runs) > 1 else ''
    steps = [e for e in events if e['event'] == 'train']
    evals = [e for e in events if e['event'] == 'eval']
    if steps:
        ax.plot([e['iter'] for e in steps], [e['loss'] for e in steps], color=color, alpha=0.25, linewidth=0.8,
                label=f"{label} train loss (each logged iteration)".strip())
    if evals:
        ax.plot([e['iter'] for e in evals], [e['train_loss'] for e in evals], color=color, linestyle='--',
                marker='.', label=f"{label} train loss (eval)".strip())
        ax.plot([e['iter'] for e in evals], [e['val_loss'] for e in evals], color=color, marker='o',
                label=f"{label} val loss (best {min(e['val_loss'] for e in evals):.4f})".strip())
    hellaswag = [e for e in events if e['event'] == 'hellaswag']
    if hellaswag:
        hs_ax.plot([e['iter'] for e in hellaswag], [e['acc_norm'] for e in hellaswag], color=color, marker='o',
                   label=f"{label} HellaSwag acc_norm (best {max(e['acc_norm'] for e in hellaswag):.4f})".strip())
        hs_ax.plot([e['iter'] for e in hellaswag], [e['acc'] for e in hellaswag], color=color, linestyle='--',
                   marker='.', alpha=0.6, label=f"{label} HellaSwag acc".strip())
ax.set_ylabel('loss')
ax.set_title(title or ', '.join(runs))
ax.grid(alpha=0.3)
ax.legend()
if with_hellaswag:
    hs_ax.axhline(0.2955, color='gray', linestyle=':', label='OpenAI GPT-2 124M acc_norm (0.2955)')
    hs_ax.axhline(0.25, color='lightgray', linestyle=':', label='random guessing (0.25)')
    hs_ax.set_ylabel('HellaSwag accuracy')
    hs_ax.grid(alpha=0.3)
    hs_ax.legend()
(hs_ax if with_hellaswag else ax).set_xlabel('iteration')
png = png or os.path.join(runs[0], 'loss.png')
fig.savefig(png, dpi=110, bbox_inches='tight')
print(f"wrote {png}")
