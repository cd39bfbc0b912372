"""
What each change of the modern recipe is worth on the laptop recipe (character Shakespeare, 4 layers,
128 wide, context 64, batch 12, 2000 iterations): the classic model, each change alone, and all of
them (config/modern.py), trained one after another in one run of this script on the same data and
batches, each scored on the whole val set (eval.py: every 64-token block of val.bin once). ms/iter
is the median of each run's logged iterations; the classic run goes first and last, so that a drift
in the machine's speed shows.

$ python benchmarks/ablate.py                         # every variant, 2000 iterations each (~15 min on 2 cores)
$ python benchmarks/ablate.py --max_iters=300 --variants=classic,muon,modern
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import report  # noqa: E402
from configurator import configure  # noqa: E402
from scripts import run_script, whole_val_loss  # noqa: E402  (benchmarks/scripts.py, beside this one)

VARIANTS = {
    'classic': [],
    'rotary': ['--rotary=True'],
    'rmsnorm': ['--norm=rmsnorm'],
    'rmsnorm_free': ['--norm=rmsnorm_free'],
    'qk_norm': ['--qk_norm=True'],
    'relu2': ['--mlp=relu2'],
    'untied': ['--tie_weights=False'],
    'untied+zero_init': ['--tie_weights=False', '--zero_init=True'],
    'softcap': ['--logit_softcap=15.0'],
    'muon': ['--optimizer=muon'],
    'modern': ['config/modern.py'],
    'modern+softcap': ['config/modern.py', '--logit_softcap=15.0'],
    'modern+rmsnorm': ['config/modern.py', '--norm=rmsnorm'],
    'modern-ns3': ['config/modern.py', '--muon_ns_steps=3'],  # fewer Newton-Schulz iterations: cheaper steps
    'modern-800': ['config/modern.py', '--max_iters=800', '--lr_decay_iters=800'],  # its own schedule, 40% of the steps
}
variants = ''  # comma-separated names from the list above; '' for all of them
max_iters = 2000
extra = ''  # more --key=value settings for every run, space-separated
results_file = 'bench_results.jsonl'
configure(globals())

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.exists(os.path.join(repo, 'data', 'shakespeare_char', 'train.bin')):
    report.fail("prepare the data first: python data/shakespeare_char/prepare.py")
names = [name for name in variants.split(',') if name] or list(VARIANTS)
unknown = [name for name in names if name not in VARIANTS]
if unknown:
    report.fail(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
if 'classic' in names:  # first and last
    names = ['classic'] + [name for name in names if name != 'classic'] + ['classic']

rows = []
for name in names:
    out_dir = os.path.join(repo, 'out-ablate', name)
    run_script('train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={out_dir}', f'--max_iters={max_iters}',
               f'--lr_decay_iters={max_iters}', '--log_interval=10', *VARIANTS[name], *extra.split(), cwd=repo)
    events = report.read_metrics(out_dir)
    ms = statistics.median(e['ms_per_iter'] for e in report.steady_steps(events))
    row = {'bench': 'ablate', 'variant': name, 'settings': ' '.join(VARIANTS[name]), 'iters': events[-1]['iter'],
           'whole_val_loss': whole_val_loss(out_dir, 'shakespeare_char'), 'ms_per_iter': round(ms, 2),
           'best_val_loss_estimate': min(e['val_loss'] for e in events if e['event'] == 'eval')}
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(results_file, 'a') as f:
        f.write(json.dumps(row) + '\n')

classic_ms = statistics.mean(row['ms_per_iter'] for row in rows if row['variant'] == 'classic') \
    if 'classic' in names else None
print("\n| variant | settings | val loss (whole val set) | ms/iter | vs classic |\n| --- | --- | --- | --- | --- |")
for row in rows:
    ratio = f"{row['ms_per_iter'] / classic_ms:.2f}x" if classic_ms else ''
    print(f"| {row['variant']} | {row['settings'] or '(config/train_shakespeare_char_cpu.py)'} | "
          f"{row['whole_val_loss']:.4f} | {row['ms_per_iter']:.1f} | {ratio} |")
