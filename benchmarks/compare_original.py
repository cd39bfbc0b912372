"""
Side by side with the original nanoGPT: the laptop recipe (character Shakespeare, block 64,
batch 12, 4 layers, 4 heads, 128 wide, float32) trained by its train.py and by ours, in
alternation on the same machine, so that both see the same load.

$ python benchmarks/compare_original.py --original=../nanoGPT                   # 3 pairs of 300 iterations
$ python benchmarks/compare_original.py --original=../nanoGPT --pairs=1 --max_iters=2000   # and val loss

The original is a checkout of github.com/karpathy/nanoGPT (it is run, never imported). Both train
on data/shakespeare_char of this repo (copied into the original's tree). Per run: the median of the
per-iteration times each script logs (the first 20 iterations and those with an evaluation in them
left out), the best val loss each script reports (an estimate from eval_iters batches) and the loss
of its saved checkpoint on the whole val set (every block_size-token block, the same for both);
per pair, the ratio of the two medians. One JSON line per run goes to the results file.
"""
import json
import os
import re
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt import report  # noqa: E402
from configurator import configure  # noqa: E402
from scripts import run_script, whole_val_loss  # noqa: E402  (benchmarks/scripts.py, beside this one)

original = ''  # path of the original nanoGPT checkout
pairs = 3  # alternating runs of each
max_iters = 300  # per run; 2000 is the full recipe (for the val loss)
ours_compile = False  # --compile for our run (the recipe itself says False)
extra = ''  # more --key=value settings for both runs, space-separated
results_file = 'bench_results.jsonl'
configure(globals())

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isfile(os.path.join(original, 'train.py')):
    report.fail(f"--original={original!r} is not a checkout of the original nanoGPT (no train.py there)")
data = os.path.join(repo, 'data', 'shakespeare_char')
if not os.path.exists(os.path.join(data, 'train.bin')):
    report.fail("prepare the data first: python data/shakespeare_char/prepare.py")
for name in ('train.bin', 'val.bin', 'meta.pkl'):
    os.makedirs(os.path.join(original, 'data', 'shakespeare_char'), exist_ok=True)
    shutil.copy(os.path.join(data, name), os.path.join(original, 'data', 'shakespeare_char', name))

recipe = ['--eval_iters=20', '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
          '--n_embd=128', f'--max_iters={max_iters}', '--lr_decay_iters=2000', '--dropout=0.0'] + extra.split()
out_dir = os.path.join(repo, 'out-compare')


def run_original():
    # the original README's CPU command
    log = run_script(os.path.join(os.path.abspath(original), 'train.py'), 'config/train_shakespeare_char.py',
                     '--device=cpu', '--compile=False', f'--out_dir={out_dir}', *recipe, cwd=original).stdout
    times = {int(i): float(ms) for i, ms in re.findall(r'iter (\d+): loss [\d.]+, time ([\d.]+)ms', log)}
    vals = [float(v) for v in re.findall(r'val loss ([\d.]+)', log)]
    # its iteration i follows the evaluation at i (logged with it), so leave those out
    return [ms for i, ms in times.items() if i >= 20 and i % 250 != 0], min(vals)


def run_ours():
    run_script('train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={out_dir}', f'--compile={ours_compile}',
               *recipe, cwd=repo)
    events = report.read_metrics(out_dir)
    times = [e['ms_per_iter'] for e in report.steady_steps(events)]  # ours already leaves evaluation out
    return times, min(e['val_loss'] for e in events if e['event'] == 'eval')


ratios = []
for pair in range(pairs):
    medians = {}
    for name, runner in (('original', run_original), ('ours', run_ours)):
        shutil.rmtree(out_dir, ignore_errors=True)
        start = time.time()
        times, best_val = runner()
        medians[name], wall = statistics.median(times), time.time() - start
        record = {'bench': 'compare_original', 'run': name, 'pair': pair, 'max_iters': max_iters,
                  'median_ms_per_iter': round(medians[name], 2), 'best_val_loss': round(best_val, 4),
                  'whole_val_loss': whole_val_loss(out_dir, 'shakespeare_char'),
                  'wall_s': round(wall, 1), 'compile': ours_compile if name == 'ours' else False,
                  'extra': extra}
        print(json.dumps(record), flush=True)
        with open(results_file, 'a') as f:
            f.write(json.dumps(record) + '\n')
    ratios.append(medians['original'] / medians['ours'])
    print(f"pair {pair}: original {medians['original']:.2f} ms/iter, ours {medians['ours']:.2f} ms/iter, "
          f"speed-up {ratios[-1]:.3f}x", flush=True)
shutil.rmtree(out_dir, ignore_errors=True)
print(f"median speed-up over {pairs} pair(s): {statistics.median(ratios):.3f}x (iterations per second, ours/original)")
