"""
HellaSwag examples per second: eval.py on a random model of GPT-2 124M's shape, on examples written
in HellaSwag's file format with lengths like its own (contexts of 15-90 words, endings of 5-40).

$ python benchmarks/eval_speed.py                                   # CPU; batch sizes 1, 4, 8, 16
$ python benchmarks/eval_speed.py --device=cuda --examples=2000 --batch_sizes=8,32,64

eval.py runs as a user runs it, once per batch size and round, the batch sizes in alternation; its
own timing (the evaluation alone, not start-up) is in its JSON line. Reports the median examples/s
per batch size; one JSON line per run goes to results_file.
"""
import json
import os
import shutil
import statistics
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from scripts import run_script  # noqa: E402  (benchmarks/scripts.py, beside this one)

examples = 48  # HellaSwag-format examples to score per run
batch_sizes = '1,4,8,16'  # eval.py --batch_size values to compare
rounds = 2  # alternating rounds over the batch sizes
device = 'cpu'
dtype = 'auto'
n_layer, n_head, n_embd, block_size = 12, 12, 768, 1024  # GPT-2 124M
results_file = 'bench_results.jsonl'
configure(globals())

work = tempfile.mkdtemp(prefix='eval_speed_')
rng = np.random.default_rng(0)
words = ("the man woman child dog ball is are was takes puts walks runs holds shows then and with a on in to of "
         "from kitchen water bowl knife paint brush wall car road hair towel camera people crowd field team").split()


def sentence(low, high):
    return ' '.join(rng.choice(words, rng.integers(low, high))).capitalize() + '.'


try:
    with open(os.path.join(work, 'hellaswag.jsonl'), 'w') as f:
        for i in range(examples):
            ctx_a, ctx_b = sentence(10, 80), ' '.join(rng.choice(words, 5))
            f.write(json.dumps({"ind": i, "activity_label": "Synthetic", "ctx_a": ctx_a, "ctx_b": ctx_b,
                                "ctx": f"{ctx_a} {ctx_b}", "split": "val", "split_type": "indomain",
                                "label": int(rng.integers(4)), "endings": [sentence(5, 40) for _ in range(4)],
                                "source_id": f"synthetic~{i}"}) + '\n')
    from nanogpt import tokens
    enc = tokens.gpt2_encoding()
    with open(os.path.join(work, 'hellaswag.jsonl')) as f:
        rows = [len(enc.encode_ordinary(e['ctx'])) + len(enc.encode_ordinary(' ' + end))
                for e in map(json.loads, f) for end in e['endings']]
    tokens_per_example = 4 * statistics.mean(rows)
    torch.manual_seed(0)
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=True,
                      vocab_size=50257, dropout=0.0)
    model = GPT(GPTConfig(**model_args, gelu_approximate='tanh'))
    torch.save({'model': model.state_dict(), 'model_args': model_args, 'iter_num': 0,
                'model_extra_args': {'gelu_approximate': 'tanh'}}, os.path.join(work, 'ckpt.pt'))
    del model
    speeds = {}
    for round_index in range(rounds):
        for batch in batch_sizes.split(','):
            out = os.path.join(work, 'results.jsonl')
            result = run_script('eval.py', f'--out_dir={work}', f'--hellaswag_file={work}/hellaswag.jsonl',
                                f'--batch_size={batch}', f'--device={device}', f'--dtype={dtype}',
                                f'--results_file={out}', cwd=work)
            with open(out) as f:
                line = [json.loads(l) for l in f][-1]
            os.remove(out)
            setup = result.stdout.splitlines()[1]  # the device line: what onednn='auto' chose
            entry = dict(bench='eval_speed', round=round_index, batch_size=int(batch), examples=line['examples'],
                         seconds=line['seconds'], examples_per_s=line['examples_per_s'], device=device, setup=setup,
                         tokens_per_example=round(tokens_per_example, 1), shape=f"{n_layer}x{n_head}x{n_embd}",
                         torch=torch.__version__)
            speeds.setdefault(int(batch), []).append(line['examples_per_s'])
            print(json.dumps(entry), flush=True)
            with open(results_file, 'a') as f:
                f.write(json.dumps(entry) + '\n')
    print(f"\nHellaSwag examples/s, GPT-2 124M shape, {examples} examples of {tokens_per_example:.0f} tokens "
          f"(4 rows), device {device} (median of {rounds}):")
    for batch, values in speeds.items():
        print(f"  batch_size {batch:>3}: {statistics.median(values):7.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
finally:
    shutil.rmtree(work, ignore_errors=True)
