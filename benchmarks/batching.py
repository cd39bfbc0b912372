"""
Rows that start at documents, or anywhere? Tiny Shakespeare as documents (a speech each: the text
between blank lines) through data/prepare.py with its characters, then the laptop recipe
(config/train_shakespeare_char_cpu.py) trained with batching='random' and batching='documents',
the same iterations each, in alternation over rounds, and scored on the same validation speeches:
val loss as training reports it (its own rows) and bits per byte of the whole val.bin (eval.py,
a sliding window, the same for both).

$ python benchmarks/batching.py                      # 2000 iterations, 2 rounds
$ python benchmarks/batching.py --iters=500 --rounds=1
"""
import json
import os
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import flops, report  # noqa: E402
from configurator import configure  # noqa: E402
from scripts import run_script  # noqa: E402  (benchmarks/scripts.py, beside this one)

input = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
iters = 2000
rounds = 2
results_file = 'bench_results.jsonl'
configure(globals())

if not os.path.exists(input):
    report.fail(f"no corpus at {input}; pass --input=PATH to tiny Shakespeare")
work = tempfile.mkdtemp(prefix='batching_')
speeches = [s.strip('\n') for s in open(input, encoding='utf-8').read().split('\n\n') if s.strip()]
with open(os.path.join(work, 'speeches.jsonl'), 'w', encoding='utf-8') as f:
    f.writelines(json.dumps({'text': s + '\n'}) + '\n' for s in speeches)


def run(script, *args):
    return run_script(script, *args, cwd=work).stdout


print(run('data/prepare.py', f'--input={os.path.join(work, "speeches.jsonl")}', '--tokenizer=char',
          '--out_dir=data/speeches').strip().splitlines()[-2])
results = {}
for round_index in range(rounds):
    for batching in ('random', 'documents'):
        out_dir = f'out-{batching}-{round_index}'
        run('train.py', os.path.join(REPO, 'config', 'train_shakespeare_char_cpu.py'), '--dataset=speeches',
            f'--out_dir={out_dir}', f'--batching={batching}', f'--max_iters={iters}', f'--lr_decay_iters={iters}',
            f'--eval_interval={iters}', '--always_save_checkpoint=True', f'--seed={1337 + round_index}')
        val_loss = [e for e in report.read_metrics(os.path.join(work, out_dir)) if e['event'] == 'eval'][-1]['val_loss']
        run('eval.py', f'--out_dir={out_dir}', '--dataset=speeches', '--device=cpu', '--results_file=eval.jsonl')
        bpb = [json.loads(line) for line in open(os.path.join(work, 'eval.jsonl'))][-1]['value']
        results.setdefault(batching, []).append((val_loss, bpb))
        print(f"round {round_index}, {batching}: val loss {val_loss:.4f} (its own rows), val bits/byte {bpb:.4f}",
              flush=True)

cpu = flops.cpu_name()
print(f"\n{len(speeches):,} speeches, laptop recipe, {iters} iterations, median of {rounds} rounds; {cpu}")
print("| batching | val loss (own rows) | val bits/byte (whole val.bin) |")
print("| --- | ---: | ---: |")
for batching, rows in results.items():
    print(f"| {batching} | {statistics.median(r[0] for r in rows):.4f} | {statistics.median(r[1] for r in rows):.4f} |")
with open(results_file, 'a') as f:
    for batching, rows in results.items():
        f.write(json.dumps({'bench': 'batching', 'device_name': cpu, 'iters': iters, 'batching': batching,
                            'val_loss': [r[0] for r in rows], 'val_bpb': [r[1] for r in rows]}) + '\n')
