"""
Benchmark a GPT's training step, or its generation: median ms/iter, tokens/s and MFU.

$ python bench.py                                             # GPT-2 124M shape, synthetic data
$ python bench.py config/train_shakespeare_char_cpu.py --real_data=True     # a recipe's model and batch
$ python bench.py config/train_gpt2.py --profile=True         # torch profiler: a table, and a trace in bench_log/
$ python bench.py config/train_shakespeare_char.py --mode=generate          # with and without the KV cache (--compile=True: and compiled)

The training step is train.py's: micro-steps of forward and backward, clipping, AdamW. MFU is
against the device's peak: a table of GPUs (bfloat16 dense: A100 312, H100 989 TFLOPS, ...) or, on
a CPU, its measured float32 matmul rate. Every run appends one JSON line to results_file, so runs
on different code, settings or machines can be compared.
"""
import json
import os
import resource
import statistics
import time

import numpy as np
import torch

from nanogpt import data, flops, memory, models, optimizers, report, runtime
from configurator import configure
from model import GPT, MODERN_DEFAULTS, GPTConfig, KVCache, StaticKVCache

mode = 'train'  # 'train' times optimizer steps; 'generate' times sampling with and without the KV cache (and compiled)
# the model and batch (the training configs set these)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 1  # micro-steps per timed iteration
n_layer = 12
n_head = 12
n_embd = 768
bias = False
dropout = 0.0
rotary = False  # the modern recipe's model choices and optimizer (see train.py, config/modern.py)
norm = 'layernorm'
qk_norm = False
mlp = 'gelu'
tie_weights = True
zero_init = False
logit_softcap = 0.0
optimizer = 'adamw'
muon_learning_rate = 0.02
muon_ns_steps = 5
vocab_size = 0  # 0: the dataset's meta.pkl with real_data, else GPT-2's 50304
real_data = False  # random blocks of data/<dataset>/train.bin rather than fixed random tokens
dataset = 'openwebtext'
learning_rate = 6e-4
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# the measurement
warmup_iters = 10  # untimed iterations first (compilation, caches)
bench_iters = 30  # timed iterations; the median is reported
profile = False  # run the torch profiler over the timed iterations
max_new_tokens = 500  # generate: tokens per sample, from a one-token prompt
repeats = 3  # generate: timed samples of each kind, alternating
slide_to = 0  # generate: the context kept when the window slides (0: block_size // 2, as in sample.py)
results_file = 'bench_results.jsonl'
seed = 1337
device = 'auto'
dtype = 'auto'
compile = 'auto'
onednn = 'auto'  # CPU, float32: Linear layers in oneDNN (see train.py)
config, _ = configure(globals(), lenient_files=True)

if mode == 'generate' and compile == 'auto':
    compile = False  # as sample.py's default; --compile=True adds sample.py's compiled one-token step (benchmarks/README.md)
rt = runtime.setup_runtime(device, dtype, compile, seed=seed, onednn=onednn)
if real_data:
    data_dir = os.path.join('data', dataset)
    meta = data.check_dataset(data_dir, dataset)
    train_path = data.dataset_paths(data_dir)['train']
    token_dtype = data.token_dtype(meta)  # uint16, or uint32 for vocabularies above 65,536
    vocab_size = vocab_size or (meta['vocab_size'] if meta else 50304)
vocab_size = vocab_size or 50304
try:
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                          vocab_size=vocab_size, dropout=dropout, **{k: config[k] for k in MODERN_DEFAULTS}))
except ValueError as e:
    report.fail(str(e))
runtime.place_model(model, rt)
forward = torch.compile(model) if rt.compile else model


def synchronize():
    if rt.device_type == 'cuda':
        torch.cuda.synchronize()
    elif rt.device_type == 'mps':
        torch.mps.synchronize()


def timed(fn):
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return time.perf_counter() - start, result


if rt.device_type == 'cuda':
    device_name = torch.cuda.get_device_name(rt.device)
else:
    device_name = f"{flops.cpu_name(rt.device_type)}, {torch.get_num_threads()} threads"
record = {'bench': mode, 'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'device': rt.device, 'device_name': device_name,
          'dtype': rt.dtype, 'compile': rt.compile, 'onednn': rt.onednn, 'torch': torch.__version__,
          'model': models.model_args_of(model.config), 'optimizer': config['optimizer'],
          'params': model.get_num_params()}
print(f"{device_name}, {rt.dtype}, compile {rt.compile}{runtime.describe_linears(rt)}: {report.format_count(model.get_num_params())} parameters")

if mode == 'train':
    optimizer = optimizers.configure(model, optimizer, weight_decay, learning_rate, (beta1, beta2), rt.device_type,
                                     muon_learning_rate, muon_ns_steps=muon_ns_steps)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.dtype == 'float16')
    fixed = torch.randint(vocab_size, (batch_size, block_size + 1), device=rt.device)

    def get_batch():
        if not real_data:
            return fixed[:, :-1], fixed[:, 1:]
        starts = np.random.randint(0, os.path.getsize(train_path) // token_dtype.itemsize - block_size, batch_size)
        tokens = data.load_blocks(train_path, starts, block_size, rt, dtype=token_dtype)
        return tokens[:, :-1], tokens[:, 1:]

    def train_step():
        for _ in range(gradient_accumulation_steps):
            X, Y = get_batch()
            with rt.autocast:
                loss = forward(X, Y)[1] / gradient_accumulation_steps
            scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup_iters):
        train_step()
    profiler = None
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU] + \
            ([torch.profiler.ProfilerActivity.CUDA] if rt.device_type == 'cuda' else [])
        profiler = torch.profiler.profile(activities=activities, record_shapes=True, with_flops=True,
                                          on_trace_ready=torch.profiler.tensorboard_trace_handler('bench_log'))
        profiler.start()
    times, faults_before = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(bench_iters):
        dt, loss = timed(train_step)
        times.append(dt)
        if profiler:
            profiler.step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / bench_iters
    if profiler:
        profiler.stop()
        sort = 'self_cuda_time_total' if rt.device_type == 'cuda' else 'self_cpu_time_total'
        print(profiler.key_averages().table(sort_by=sort, row_limit=20))
        print("trace written to bench_log/ (open it in Perfetto or chrome://tracing)")
    median = statistics.median(times)
    tokens = batch_size * block_size * gradient_accumulation_steps
    peak = flops.peak_flops(rt.device, rt.dtype)
    mfu = model.estimate_mfu(batch_size * gradient_accumulation_steps, median, peak) if peak else None
    record.update(batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps, real_data=real_data,
                  profiled=profile, median_ms=round(median * 1000, 3), p10_ms=round(np.percentile(times, 10) * 1000, 3),
                  p90_ms=round(np.percentile(times, 90) * 1000, 3), tokens_per_s=round(tokens / median),
                  peak_tflops=round(peak / 1e12, 2) if peak else None, mfu=round(mfu, 4) if mfu else None,
                  loss=round(loss.item() * gradient_accumulation_steps, 4), page_faults_per_iter=round(faults, 1),
                  **memory.peak_memory_gb(rt))
    print(f"median {median * 1000:.2f} ms/iter (p10 {record['p10_ms']:.2f}, p90 {record['p90_ms']:.2f}) over "
          f"{bench_iters} iterations, {tokens / median:,.0f} tokens/s"
          + (f", MFU {mfu * 100:.1f}% of {peak / 1e12:.3g} TFLOPS" if mfu else ", MFU unknown (no peak for this device)"))
elif mode == 'generate':
    model.eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=rt.device)
    # eager with and without the cache; with compile also sample.py's compiled one-token step over static caches
    kinds = {'kv_cache': {}, 'no_cache': dict(use_cache=False)}
    if rt.compile:
        kinds['compiled'] = dict(decode_step=forward)
    times, outputs, compile_s = {kind: [] for kind in kinds}, {}, None
    with torch.no_grad(), rt.autocast:
        model.generate(prompt, 20)  # warm up
        if rt.compile:  # two tokens: the prompt's, eager, then the first step, which compiles
            compile_s, _ = timed(lambda: model.generate(prompt, 2, **kinds['compiled']))
            model.generate(prompt, 20, **kinds['compiled'])  # warm up
        for _ in range(repeats):
            for kind, how in kinds.items():  # alternating, so every kind sees the same machine load
                torch.manual_seed(seed)
                dt, out = timed(lambda: model.generate(prompt, max_new_tokens, temperature=0.8, top_k=200,
                                                       slide_to=slide_to or block_size // 2, **how))
                times[kind].append(dt)
                outputs[kind] = out
        # Equal tokens both ways hold where both paths round alike (CPU float32); bfloat16 or TF32
        # kernels may round a cached step differently, so compare the logits as well: every position
        # of a generated sequence at once, against one token at a time through the cache.
        sequence = outputs['kv_cache'][:, :block_size]
        whole = model.logits(model.hidden_states(sequence)).float()

        def stepwise(caches, step=model):  # the first token fills the empty cache, eager, as generate() does
            return torch.cat([(model if i == 0 else step)(sequence[:, [i]], kv_caches=caches)[0]
                              for i in range(sequence.size(1))], dim=1).float()
        logit_gap = (whole - stepwise([KVCache() for _ in model.transformer.h])).abs().max().item()
        if rt.compile:
            compiled_gap = (whole - stepwise([StaticKVCache(block_size, rt.device) for _ in model.transformer.h],
                                             forward)).abs().max().item()
    median = {kind: statistics.median(times[kind]) for kind in kinds}
    tokens_per_s = {kind: round(max_new_tokens / median[kind], 1) for kind in kinds}
    record.update(max_new_tokens=max_new_tokens, repeats=repeats, slide_to=slide_to,
                  kv_cache_tokens_per_s=tokens_per_s['kv_cache'], no_cache_tokens_per_s=tokens_per_s['no_cache'],
                  speedup=round(median['no_cache'] / median['kv_cache'], 3),
                  same_tokens=bool(torch.equal(outputs['kv_cache'], outputs['no_cache'])), max_logit_diff=logit_gap)
    print(f"{max_new_tokens} new tokens: KV cache {tokens_per_s['kv_cache']:,.1f} tokens/s, without "
          f"{tokens_per_s['no_cache']:,.1f} tokens/s: {record['speedup']:.2f}x (median of {repeats}); "
          f"same tokens: {record['same_tokens']}, logits cached vs whole within {logit_gap:.2g}")
    if rt.compile:
        record.update(compiled_tokens_per_s=tokens_per_s['compiled'], compile_s=round(compile_s, 2),
                      compiled_speedup=round(median['kv_cache'] / median['compiled'], 3),
                      compiled_same_tokens=bool(torch.equal(outputs['compiled'], outputs['kv_cache'])),
                      compiled_max_logit_diff=compiled_gap, compile_counts=runtime.compile_counts())
        print(f"compiled one-token step: {tokens_per_s['compiled']:,.1f} tokens/s, {record['compiled_speedup']:.2f}x "
              f"the eager KV cache, after {compile_s:.1f} s compiling; same tokens: {record['compiled_same_tokens']}, "
              f"logits within {compiled_gap:.2g}; {runtime.describe_compile()}")
else:
    report.fail(f"unknown mode {mode!r}; use 'train' or 'generate'")

with open(results_file, 'a') as f:
    f.write(json.dumps(record) + '\n')
print(f"appended to {results_file}")
