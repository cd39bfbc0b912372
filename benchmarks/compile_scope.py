"""
What does torch.compile cost and gain, and should it wrap the whole model or each block? Trains the
laptop recipe (config/train_shakespeare_char_cpu.py on data/shakespeare_char) eager, compiled whole
(compile_scope=model) and compiled per block (compile_scope=blocks), in one process and under
torchrun, the cases in alternation. Inductor's caches are off (a fresh machine has none), so the
start-up is a cold compile.

$ python benchmarks/compile_scope.py                          # 1 and 2 processes, 2 rounds
$ python benchmarks/compile_scope.py --nproc=1 --rounds=3 --device=cuda --dtype=bfloat16

Per case: seconds from the launch to the first training step's end (imports, the first evaluation
and both compiles: the compiled cases minus the eager one is the compiling), the median ms/iter of
the log lines after iteration 20, and Dynamo's counts from the run's last line. Medians over rounds.
"""
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from nanogpt import flops, report  # noqa: E402
from configurator import configure  # noqa: E402
from scripts import run_script  # noqa: E402  (benchmarks/scripts.py, beside this one)

nproc = '1,2'  # process counts to try: 1 is plain python, more run under torchrun
rounds = 2
iters = 120  # training iterations per run
device = 'cpu'
dtype = 'float32'
results_file = 'bench_results.jsonl'
configure(globals())

CASES = (('eager', ['--compile=False']), ('model', ['--compile=True', '--compile_scope=model']),
         ('blocks', ['--compile=True', '--compile_scope=blocks']))
work = tempfile.mkdtemp(prefix='compile_scope_')
results = {}  # (nproc, case) -> list of (start-up s, ms/iter, counts line)
for round_index in range(rounds):
    for processes in map(int, str(nproc).split(',')):
        for case, args in CASES:
            out_dir = os.path.join(work, f'{processes}-{case}')
            start = time.time()
            result = run_script('train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={out_dir}',
                                f'--device={device}', f'--dtype={dtype}', f'--max_iters={iters}', '--log_interval=1',
                                '--eval_interval=100000', f'--gradient_accumulation_steps={processes}', *args,
                                cwd=REPO, nproc=processes if processes > 1 else None,
                                env=dict(TORCHINDUCTOR_FORCE_DISABLE_CACHES='1',
                                         OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes))))
            events = report.read_metrics(out_dir)
            first = next(e for e in events if e['event'] == 'train')
            steady = statistics.median(e['ms_per_iter'] for e in report.steady_steps(events))
            counts = next((line for line in result.stdout.splitlines() if line.startswith('compile:')), '')
            results.setdefault((processes, case), []).append((first['time'] - start, steady, counts))
            print(f"round {round_index + 1}: {processes} process(es), {case}: first step after "
                  f"{first['time'] - start:.1f} s, {steady:.2f} ms/iter {counts}", flush=True)

cpu = flops.cpu_name() if device == 'cpu' else device
print(f"\n{cpu}, {os.cpu_count()} cores; {iters} iterations of the laptop recipe, {rounds} rounds, medians\n")
print("| processes | compile | first step after (s) | ms/iter | Dynamo |\n| --- | --- | --- | --- | --- |")
with open(results_file, 'a') as f:
    for (processes, case), runs in results.items():
        startup, ms = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"| {processes} | {case} | {startup:.1f} | {ms:.2f} | {runs[-1][2].removeprefix('compile: ')} |")
        f.write(json.dumps(dict(bench='compile_scope', processes=processes, case=case, startup_s=round(startup, 2),
                                ms_per_iter=round(ms, 3), cpu=cpu, device=device, dtype=dtype,
                                time=time.strftime('%Y-%m-%d %H:%M:%S'))) + '\n')
