"""
Which tokenizer, for the same model and compute? Prepares tiny Shakespeare with data/prepare.py
with its characters, GPT-2's BPE and byte-level BPEs trained on it at two sizes, then trains the
laptop recipe's model (config/train_shakespeare_char_cpu.py) on each for the same wall time and
measures val bits per byte, the one measure that compares across tokenizers. The validation text
is the same bytes for all (data/prepare.py holds out the file's end, cut where its size says).

$ python benchmarks/tokenizer_choice.py                              # about 60 s of training each
$ python benchmarks/tokenizer_choice.py --seconds=20 --bpe_sizes=512,2048

Per tokenizer: bytes per token of the train split; the tokenizer's training time and MB/s
(the corpus's train split over the seconds; for char the scan for its characters; GPT-2's is
trained already); ms/iter (the median of the log lines of a calibration run) and the iterations
that make the same wall time; val loss per token and val bits per byte (eval.py --dataset).
"""
import json
import os
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import flops, report  # noqa: E402
from configurator import configure  # noqa: E402
from scripts import run_script  # noqa: E402  (benchmarks/scripts.py, beside this one)

input = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')  # the corpus
seconds = 60.0  # training wall time per tokenizer
bpe_sizes = '1024,4096'  # the byte-level BPEs' vocabulary sizes
calibration_iters = 60  # iterations of the run that measures ms/iter
results_file = 'bench_results.jsonl'
configure(globals())

if not os.path.exists(input):
    report.fail(f"no corpus at {input}; pass --input=PATH to tiny Shakespeare (or any text)")
work = tempfile.mkdtemp(prefix='tokenizers_')
RECIPE = [os.path.join(REPO, 'config', 'train_shakespeare_char_cpu.py'), '--compile=False', '--onednn=False',
          '--log_interval=10']
CASES = [('char', ['--tokenizer=char']), ('gpt2', ['--tokenizer=gpt2'])] + \
    [(f'bpe-{size}', ['--tokenizer=bpe', f'--vocab_size={size}']) for size in map(int, bpe_sizes.split(','))]


def run(script, *args):
    return run_script(script, *args, cwd=work).stdout


train_bytes = None
rows = []
for name, args in CASES:
    started = time.time()
    out = run('data/prepare.py', f'--input={input}', f'--out_dir=data/{name}', '--num_proc=1', *args)
    prepare_s = time.time() - started
    trained = re.search(r'trained a byte-level BPE of [\d,]+ tokens in ([\d.]+) s', out)
    tokens, per_token = re.search(r'train has ([\d,]+) tokens.*?([\d.]+) bytes per token', out).groups()
    train_bytes = round(int(tokens.replace(',', '')) * float(per_token))
    if name == 'char':  # its "training": the pass over the corpus that collects the characters
        scan_started = time.time()
        set(open(input, encoding='utf-8').read())
        learn_s = time.time() - scan_started
    else:
        learn_s = float(trained.group(1)) if trained else None
    rows.append(dict(tokenizer=name, bytes_per_token=float(per_token), learn_s=learn_s,
                     learn_mb_s=train_bytes / 1e6 / learn_s if learn_s else None, prepare_s=prepare_s))

# ms/iter of each, then training runs of the same wall time, one after another
for row in rows:
    name = row['tokenizer']
    run('train.py', *RECIPE, f'--dataset={name}', f'--out_dir=cal-{name}', f'--max_iters={calibration_iters}',
        f'--eval_interval={calibration_iters}', '--eval_iters=1')
    row['ms_per_iter'] = statistics.median(e['ms_per_iter'] for e in report.steady_steps(
        report.read_metrics(os.path.join(work, f'cal-{name}')), after_iter=10))
    row['iters'] = max(1, round(seconds * 1000 / row['ms_per_iter']))
for row in rows:
    name, iters = row['tokenizer'], row['iters']
    run('train.py', *RECIPE, f'--dataset={name}', f'--out_dir=out-{name}', f'--max_iters={iters}',
        f'--lr_decay_iters={iters}', f'--warmup_iters={min(100, iters // 10)}', f'--eval_interval={iters}',
        '--always_save_checkpoint=True')
    done = [e for e in report.read_metrics(os.path.join(work, f'out-{name}')) if e['event'] == 'done'][-1]
    row['train_s'] = done['seconds']
    run('eval.py', f'--out_dir=out-{name}', f'--dataset={name}', '--device=cpu', '--results_file=eval.jsonl')
    results = [json.loads(line) for line in open(os.path.join(work, 'eval.jsonl'))]
    row['val_loss'], row['val_bpb'] = (next(r['value'] for r in reversed(results) if r['metric'] == metric)
                                       for metric in ('loss', 'bpb'))

cpu = flops.cpu_name()
print(f"tiny Shakespeare ({train_bytes / 1e6:.2f} MB of train text), the laptop recipe's model, {seconds:.0f} s "
      f"of training each; {cpu}")
print("| tokenizer | bytes/token | tokenizer training | MB/s | ms/iter | iterations | val loss/token | val bits/byte |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    learned = f"{r['learn_s']:.2f} s" if r['learn_s'] is not None else '(pretrained)'
    speed = f"{r['learn_mb_s']:.1f}" if r['learn_mb_s'] else '-'
    print(f"| {r['tokenizer']} | {r['bytes_per_token']:.2f} | {learned} | {speed} | {r['ms_per_iter']:.1f} | "
          f"{r['iters']:,} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} |")
with open(results_file, 'a') as f:
    for r in rows:
        f.write(json.dumps({'bench': 'tokenizers', 'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'device_name': cpu,
                            'seconds': seconds, **r}) + '\n')
