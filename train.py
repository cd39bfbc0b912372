"""
Train a GPT. One plain loop, top to bottom; settings are the globals below.

$ python train.py config/train_shakespeare_char.py          # one process: a CUDA GPU, else MPS, else the CPU
$ python train.py config/train_shakespeare_char_cpu.py --max_iters=500   # the laptop recipe, shortened
$ torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2.py   # DDP; FSDP: add --fsdp=True
More machines, and everything else: docs/training.md, docs/distributed.md, docs/settings.md
"""
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nanogpt import (checkpoints, data, distributed, evals, flops, lora, memory, models, optimizers, out_dirs,
                     randomness, report, runtime, settings)
from configurator import configure
from model import MODERN_DEFAULTS

# -----------------------------------------------------------------------------
# default settings train GPT-2 (124M) on OpenWebText, as in the original
# I/O
out_dir = 'out'
eval_interval = 2000  # evaluate (and maybe checkpoint) every this many iterations
log_interval = 1  # print a log line every this many iterations
eval_iters = 200  # batches per split in each evaluation
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save after every eval, not only when val loss improves
hellaswag_interval = 0  # HellaSwag accuracy every this many iterations; 0 = never
hellaswag_file = ''  # '' means data/hellaswag/hellaswag_val.jsonl, downloaded once
# 'scratch', 'resume' (from out_dir), a run's out_dir (finetune its weights), 'gpt2'...'gpt2-xl', a HF folder
init_from = 'scratch'
# wandb logging
wandb_log = False  # log to Weights & Biases (WANDB_MODE=offline works without network)
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'  # reads data/<dataset>/train.bin, val.bin and meta.pkl if any
batching = 'random'  # rows start anywhere, as in the original; 'documents': each at a document's first token
gradient_accumulation_steps = 5 * 8  # micro-steps per optimizer step, summed over all DDP ranks
batch_size = 12  # sequences per micro-step (per rank)
block_size = 1024  # context length in tokens
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining; try 0.1+ for finetuning
bias = False  # biases inside LayerNorm and Linear layers
# the modern recipe, each choice on its own (config/modern.py turns on the measured best set; docs/modern.md)
rotary = False  # rotary position embeddings instead of learned ones
norm = 'layernorm'  # 'rmsnorm' (with a gain) or 'rmsnorm_free' (without)
qk_norm = False  # RMS-normalise queries and keys per head
mlp = 'gelu'  # 'relu2': ReLU squared
tie_weights = True  # False: an output head of its own
zero_init = False  # residual projections (and an untied head) start at zero
logit_softcap = 0.0  # > 0: logits = cap * tanh(logits / cap)
# optimizer: 'adamw' as in the original, or 'muon': Muon for the blocks' matrices, AdamW for the rest
optimizer = 'adamw'
muon_learning_rate = 0.02  # Muon's peak learning rate; it follows the same warmup and decay
muon_momentum = 0.95
muon_weight_decay = 0.0
muon_ns_steps = 5  # Newton-Schulz iterations per update: each costs the same, whatever the batch
# AdamW
learning_rate = 6e-4  # peak learning rate
max_iters = 600000  # optimizer steps in total
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the gradient norm to this; 0.0 disables
# learning rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True  # False keeps learning_rate constant
warmup_iters = 2000
lr_decay_iters = 600000  # ~= max_iters per Chinchilla
min_lr = 6e-5  # ~= learning_rate/10 per Chinchilla
# system
backend = 'auto'  # DDP backend: 'auto' is nccl on CUDA, gloo on CPU
dist_timeout = 600  # seconds a torchrun rank waits for the others before it stops and names the lost ones
fsdp = False  # under torchrun: shard weights, gradients and AdamW state across processes (FSDP2), not DDP
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'float32', 'bfloat16', 'float16'; auto: bfloat16 (else float16) on CUDA, float32 elsewhere
compile = 'auto'  # torch.compile the model; 'auto' is on for CUDA only
compile_scope = 'auto'  # 'model' (one graph) or 'blocks'; auto: blocks under torchrun or with activation_checkpointing
onednn = 'auto'  # CPU, float32: Linear layers' matmuls in oneDNN; 'auto': on AMD CPUs with AVX-512 (docs/settings.md)
seed = 1337  # drives the init, the batches and dropout
# fitting in memory (docs/memory.md)
activation_checkpointing = False  # recompute each block's activations in the backward pass rather than keep them
lora_rank = 0  # > 0: finetune rank-r adapters (LoRA) beside the blocks' linears, the model's own weights frozen
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0  # dropout on the adapters' input
lora_targets = 'attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj'  # the linears of each block that get adapters
check_memory = True  # CUDA: stop before the run when its memory estimate exceeds the GPU's free memory
# -----------------------------------------------------------------------------
config, explicit = configure(globals())
# -----------------------------------------------------------------------------
# where it runs: the settings checked, the device and processes set up, out_dir claimed
settings.check_training(config)
distributed.check_fsdp_setting(fsdp, device, optimizer, onednn)
# oneDNN's linear op is not tried on FSDP's sharded weights
rt = runtime.setup_runtime(device, dtype, compile, backend, seed, False if fsdp else onednn, dist_timeout)
compile_scope = runtime.resolve_compile_scope(compile_scope, rt.compile, fsdp, rt.world_size, activation_checkpointing)
settings.check_world_size(gradient_accumulation_steps, rt.world_size, fsdp)
gradient_accumulation_steps //= rt.world_size  # each rank does its share of the micro-steps
ckpt_path = os.path.join(out_dir, checkpoints.CKPT_NAME)
# a group that torchrun --max-restarts started again goes on from this run's latest checkpoint
if rt.restarts:
    init_from = checkpoints.restart_point(out_dir, init_from, rt.restarts, say=rt.master)
if rt.master:
    out_dirs.ensure_writable(out_dir)
    out_dirs.lock_out_dir(out_dir)  # a second run into this out_dir is refused until this one exits
    if init_from != 'resume' and not eval_only and not rt.restarts:  # a new run: the one before it moves aside
        out_dirs.keep_previous_run(out_dir, init_from)

# -----------------------------------------------------------------------------
# the data and the model: from scratch, resumed from out_dir, or another run's or GPT-2's weights
data_dir = os.path.join('data', dataset)
meta = data.check_dataset(data_dir, dataset)
iter_num, best_val_loss, checkpoint = 0, float('inf'), None
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=meta['vocab_size'] if meta else 50304, dropout=dropout,
                  **{k: config[k] for k in MODERN_DEFAULTS})
if init_from == 'scratch':
    model = models.new_model(model_args)
elif init_from == 'resume':
    resume_path = checkpoints.latest_checkpoint(out_dir)  # last.pt if a stopped run got further than ckpt.pt
    # memory-mapped on the CPU (shared by the ranks): nothing goes to a GPU before the memory check
    checkpoint = checkpoints.load_checkpoint(resume_path, 'cpu', mmap=True)
    model = models.model_from_checkpoint(checkpoint, resume_path, dropout=dropout)
    models.check_overrides(model, config, explicit, out_dir=out_dir)
    models.check_tokenizer(checkpoint, meta, data_dir)
    iter_num, best_val_loss = checkpoint['iter_num'], float(checkpoint['best_val_loss'])
    if (changes := checkpoints.describe_changes(checkpoint, config, resume_path, rt.world_size)) and rt.master:
        print(changes)
elif models.is_run(init_from):  # another run's out_dir: its weights start a new run (finetuning)
    model = models.run_model(init_from, meta, data_dir, dropout)
    models.check_overrides(model, config, explicit, pretrained=init_from)
elif models.is_pretrained(init_from):  # OpenAI's GPT-2 weights, or a Hugging Face GPT-2 folder
    model = models.pretrained_model(init_from, dropout)
    models.check_overrides(model, config, explicit, pretrained=init_from)
else:
    report.fail(f"unknown init_from {init_from!r}; use 'scratch', 'resume', a run's out_dir, a GPT-2 name or "
                f"a GPT-2 folder")
if init_from != 'scratch' and ('block_size' not in explicit or init_from == 'resume'):
    block_size = model.config.block_size
if block_size > model.config.block_size:
    report.fail(f"block_size {block_size} is larger than the model's {model.config.block_size}")
if meta is None and data.mask_paths(data_dir) and model.config.vocab_size < 50304:  # OpenAI's GPT-2, for chat
    models.pad_vocab(model)
if block_size < model.config.block_size:  # e.g. finetuning GPT-2 on shorter blocks
    model.crop_block_size(block_size)
model_args = models.model_args_of(model.config)  # what the checkpoint's model really is
config.update({k: getattr(model.config, k) for k in models.MODEL_SHAPE_KEYS})
models.check_vocab_size(model, meta, data_dir)
lora.attach(model, lora_rank, lora_alpha, lora_dropout, lora_targets, init_from, checkpoint, say=rt.master)
blocks = data.Blocks(data_dir, meta, block_size, model.config.vocab_size, batching)  # checks the files first
hellaswag = evals.load_hellaswag(hellaswag_file, rt, meta, model.config.vocab_size) if hellaswag_interval else None
tokens_per_iter = gradient_accumulation_steps * rt.world_size * batch_size * block_size
peak_estimate = memory.estimate_peak(model, batch_size, block_size, rt.dtype, rt.device_type, config['optimizer'],
                                     rt.world_size, fsdp, activation_checkpointing)
memory.check_fits(peak_estimate, rt, check_memory)  # says it; before anything goes to a GPU
if fsdp:  # block by block onto the device, sharded: no rank ever holds the whole model there
    distributed.shard(model, rt)
runtime.place_model(model, rt)

# -----------------------------------------------------------------------------
# the optimizer, DDP and compile
scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.dtype == 'float16')  # no-op unless float16
optimizer = optimizers.configure(model, optimizer, weight_decay, learning_rate, (beta1, beta2), rt.device_type,
                                 muon_learning_rate, muon_momentum, muon_weight_decay, muon_ns_steps)
if checkpoint is not None:
    checkpoints.load_training_state(checkpoint, model, optimizer, scaler, config['optimizer'], fsdp)
raw_model = model
if rt.ddp and not fsdp:
    model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == 'cuda' else None)
if rt.compile:
    model = runtime.compile_model(raw_model, model, compile_scope, say=rt.master)
if activation_checkpointing:  # after compile: a compiled block's graph is then the one a run without it has
    memory.recompute_activations(raw_model)

# -----------------------------------------------------------------------------
# what the loop calls: batches, evaluation, checkpoints
batch_generator = torch.Generator()


def get_batch(split, sample_seed):
    # Each batch is a pure function of its seed (rank, iteration, micro-step): a resumed run sees
    # the same batches as an uninterrupted one without carrying loader state around.
    batch_generator.manual_seed(hash((seed, rt.rank) + sample_seed) % 2**63)
    return blocks.batch(split, batch_size, batch_generator, rt)


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split (the same batches at every eval), averaged over
    ranks. A stop request cuts it short: then every rank gets NaN, and the evaluation is skipped."""
    out = {}
    model.eval()
    for split_index, split in enumerate(('train', 'val')):
        losses = torch.zeros(eval_iters, device=rt.device)  # read once at the end: one wait for the device
        for k in range(eval_iters):
            if stop.requested:
                break
            X, Y = get_batch(split, (-1 - split_index, k))
            with rt.autocast:
                _, loss = model(X, Y)
            losses[k] = loss
        out[split] = distributed.all_ranks_mean(float('nan') if stop.requested else losses.mean().item(), rt)
    model.train()
    return out


def due(interval):
    """Whether an evaluation every interval iterations runs now: also at iteration 0 of a new run, at
    the end and with eval_only, but not again right after a resume."""
    return eval_only or iter_num == max_iters or \
        (iter_num % interval == 0 and (iter_num != start_iter or iter_num == 0))


def runs_left(interval):
    """How many more evaluations every interval iterations this run will make, for the ETA."""
    return (max_iters - 1) // interval - iter_num // interval + 1


def save(path):
    """Write a checkpoint (rank 0; every rank must call this, for the RNG states and FSDP's gathers).
    Returns 'saved', 'not finite' (nothing written), or 'write failed' on every rank when rank 0's
    write failed (a full disk), so that they all stop together."""
    if distributed.any_rank([not checkpoints.all_finite(raw_model)], rt)[0]:  # FSDP: each rank its shards
        if rt.master:
            print(f"not saving {path}: the model has non-finite weights")
        return 'not finite'
    model_state, optimizer_state = distributed.full_state_dicts(raw_model, optimizer) if fsdp else \
        (raw_model.state_dict(), optimizer.state_dict())
    model_state, adapters = lora.split(raw_model, model_state)  # 'model': merged weights, a plain GPT's
    checkpoint = {
        'model': model_state, 'lora': adapters, 'optimizer': optimizer_state, 'model_args': model_args,
        'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config,
        'scaler': scaler.state_dict(), 'meta': meta,
        'rng': distributed.gather_from_ranks(randomness.rng_state(), rt),
        # beyond the original's model_args, which must stay loadable by it
        'model_extra_args': {'gelu_approximate': raw_model.config.gelu_approximate},
        'wandb_run_id': log.wandb_run_id,
    }
    failed_here = rt.master and not checkpoints.save_checkpoint(checkpoint, path)
    return 'write failed' if distributed.any_rank([failed_here], rt)[0] else 'saved'

# -----------------------------------------------------------------------------
# what the run says and records
n_params = raw_model.get_num_params()
peak_flops = flops.peak_flops(rt.device, rt.dtype) if rt.master else None  # for MFU, which rank 0 alone logs
run_info = dict(tokens_per_iter=tokens_per_iter, n_params=n_params, device=rt.device, dtype=rt.dtype,
                world_size=rt.world_size, compile=rt.compile)
wandb_init = dict(project=wandb_project, name=wandb_run_name, config={**config, **run_info})
log = report.RunLog(out_dir, iter_num if init_from == 'resume' else None, rt.master,
                    checkpoint.get('wandb_run_id') if checkpoint else None, wandb_init if wandb_log else None)
if checkpoint is not None and rt.rank < len(checkpoint.get('rng', [])):
    randomness.set_rng_state(checkpoint['rng'][rt.rank])  # last: everything above may draw random numbers
checkpoint = None  # free the memory

stop = distributed.GracefulStop()  # from here on Ctrl-C / SIGTERM: finish the step, save, exit
if rt.master:
    print(f"device {rt.device}, dtype {rt.dtype}, compile {rt.compile}, "
          f"{runtime.describe_processes(rt, fsdp)}{runtime.describe_linears(rt)}")
    print(report.describe_model(raw_model.config, n_params, block_size, config['optimizer']))
    print(f"{tokens_per_iter:,} tokens per iteration ({batch_size} sequences x {block_size} tokens x "
          f"{gradient_accumulation_steps * rt.world_size} micro-steps); {max_iters:,} iterations; "
          f"out_dir {out_dir}")
    if init_from == 'resume':
        print(f"resuming from {resume_path} at iteration {iter_num} (best val loss {best_val_loss:.4f})")
    if rt.device_type == 'cpu' and peak_flops:
        eval_tokens = (1 if eval_only else (max_iters - iter_num) // eval_interval + 1) * 2 * eval_iters * \
            batch_size * block_size * rt.world_size
        report.warn_if_slow_on_cpu(raw_model, tokens_per_iter, 0 if eval_only else max_iters - iter_num,
                                   eval_tokens, peak_flops, dataset)

# -----------------------------------------------------------------------------
# the training loop. On a GPU it never waits for the device between log lines: the loss is read,
# and a non-finite loss noticed, only at log lines and evaluations ("checks"), where all ranks
# also agree whether to stop. Between checks the GPU runs ahead of Python.
X, Y = get_batch('train', (iter_num, 0))
start_iter, run_start = iter_num, time.time()
ms_per_iter, mfu = None, None  # smoothed, for the ETA
eval_seconds, hellaswag_seconds = 0.0, 0.0  # the last evaluations' durations
loss_finite = torch.ones((), dtype=torch.bool, device=rt.device)  # every loss since the last check was finite
stop_agreed = False  # a stop asked for on some rank, as the ranks agreed at the last check
ended = None  # why the loop ended, set where it happens: 'finished', 'stopped', 'diverged' or 'write failed'
t0, t0_iter, last_check = time.time(), iter_num, iter_num
while True:
    lr = optimizers.learning_rate_at(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters, decay_lr)
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)  # Muon's groups: their own peak, the same schedule

    # evaluate, and checkpoint when val loss improves (or always, if asked); not again right after a resume
    if due(eval_interval):
        losses = estimate_loss()
        if not math.isnan(losses['val']):  # NaN: cut short by a stop request
            improved = losses['val'] < best_val_loss
            best_val_loss = min(best_val_loss, losses['val'])
            written = None
            if iter_num > 0 and not eval_only and (improved or always_save_checkpoint):
                written = save(ckpt_path)
            if written == 'write failed':
                ended = 'write failed'
            train_loss, val_loss = losses['train'], losses['val']
            outcome = f"saved {ckpt_path}" if written == 'saved' else \
                f"best {best_val_loss:.4f}, no checkpoint written"
            log.event('eval', f"step {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                              f"{outcome}",
                      iter=iter_num, train_loss=train_loss, val_loss=val_loss, best_val_loss=best_val_loss,
                      lr=lr, saved=written == 'saved', **(runtime.compile_counts() if rt.compile else {}),
                      wandb={'train/loss': train_loss, 'val/loss': val_loss, 'lr': lr})
        eval_seconds = time.time() - t0
        t0, t0_iter = time.time(), iter_num  # evaluation time is not training time
    if hellaswag and due(hellaswag_interval) and not ended:  # every rank scores its share
        scores = evals.hellaswag(raw_model, hellaswag, rt, batch_size)
        log.event('hellaswag', f"step {iter_num}: hellaswag acc_norm {scores['acc_norm']:.4f}, "
                  f"acc {scores['acc']:.4f} ({scores['examples']:,} examples, {scores['seconds']:.1f} s)",
                  iter=iter_num, **{k: scores[k] for k in ('acc', 'acc_norm', 'examples', 'seconds')},
                  wandb={'hellaswag/acc': scores['acc'], 'hellaswag/acc_norm': scores['acc_norm']})
        hellaswag_seconds = scores['seconds']
        t0 += hellaswag_seconds  # not training time either
    if ended:
        break
    if eval_only:
        ended = 'finished'
        break
    # one process can stop at any step; DDP ranks agree on it at the checks. Between steps, so that a
    # stop always leaves a whole step behind
    if stop.requested if not rt.ddp else stop_agreed:
        stop_path = ckpt_path if always_save_checkpoint else os.path.join(out_dir, checkpoints.LAST_NAME)
        written = save(stop_path)
        if written == 'saved' and rt.master:
            print(f"stopped at iteration {iter_num}; saved {stop_path}. Resume with: "
                  f"python {' '.join(sys.argv)} --init_from=resume", flush=True)
        ended = 'write failed' if written == 'write failed' else 'stopped'
        break
    if iter_num >= max_iters:
        ended = 'finished'
        break

    # one optimizer step over gradient_accumulation_steps micro-batches
    for micro_step in range(gradient_accumulation_steps):
        last_micro_step = micro_step == gradient_accumulation_steps - 1
        # DDP averages gradients across ranks only on the last micro-step; FSDP reduce-scatters them then
        if fsdp:
            raw_model.set_requires_gradient_sync(last_micro_step)
        with model.no_sync() if rt.ddp and not fsdp and not last_micro_step else nullcontext():
            with rt.autocast:
                # keep only the loss: the logits could be freed before the backward pass
                loss = model(X, Y)[1] / gradient_accumulation_steps  # gradients sum over micro-steps
            # fetch the next batch while the GPU is still busy with this one
            X, Y = get_batch('train', (iter_num + 1, 0) if last_micro_step else (iter_num, micro_step + 1))
            scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    loss_finite &= torch.isfinite(loss.detach())  # on the device: no wait here
    iter_num += 1

    logging = iter_num % log_interval == 0
    if not (logging or iter_num % eval_interval == 0 or iter_num >= max_iters):
        continue
    # a check: the only point between evaluations where the host waits for the device
    stop_anywhere, diverged = distributed.any_rank([stop.requested is not None, ~loss_finite], rt)
    stop_agreed = stop_agreed or stop_anywhere
    if diverged:  # every rank sees it at the same check, so all stop together
        if rt.master:
            report.say_diverged(last_check + 1, iter_num, checkpoints.describe(ckpt_path))
        ended = 'diverged'
        break
    last_check = iter_num
    if logging and rt.master:
        lossf = loss.item() * gradient_accumulation_steps  # the last micro-batch's loss
        t1 = time.time()
        dt, t0, t0_iter = (t1 - t0) / (iter_num - t0_iter), t1, iter_num  # per iteration since the last line
        if iter_num - start_iter > log_interval:  # the first stretch pays for warm-up (and compiling)
            ms_per_iter = dt * 1000 if ms_per_iter is None else 0.9 * ms_per_iter + 0.1 * dt * 1000
            step_mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt, peak_flops) \
                if peak_flops else None
            mfu = step_mfu if mfu is None or step_mfu is None else 0.9 * mfu + 0.1 * step_mfu
        eta = (max_iters - iter_num) * (ms_per_iter or dt * 1000) / 1000 + \
            runs_left(eval_interval) * eval_seconds
        eta += runs_left(hellaswag_interval) * hellaswag_seconds if hellaswag else 0
        log.event('train', f"iter {iter_num}/{max_iters}: loss {lossf:.4f}, lr {lr:.3e}, {dt * 1000:.1f} "
                  f"ms/iter, {tokens_per_iter / dt:,.0f} tok/s" + (f", mfu {mfu * 100:.1f}%" if mfu else '')
                  + f", eta {report.format_duration(eta)}", iter=iter_num, loss=lossf, lr=lr,
                  ms_per_iter=dt * 1000, tokens_per_s=tokens_per_iter / dt, mfu=mfu,
                  wandb={'loss': lossf, 'lr': lr, 'mfu': mfu, 'tokens_per_s': tokens_per_iter / dt})

# -----------------------------------------------------------------------------
# the end: a finished run's summary; every rank leaves the group; the exit status says why it ended
if ended == 'finished':
    if rt.master and not eval_only and os.path.exists(last_path := os.path.join(out_dir, checkpoints.LAST_NAME)):
        os.remove(last_path)  # the state of a stop this run has now gone past
    if rt.ddp and not fsdp:  # FSDP's ranks hold different shards by design
        distributed.check_weights_agree(raw_model, rt)
    if rt.master and not eval_only:
        # with compile, its counts: a graph break or a recompile after warm-up costs speed on every step
        took = report.format_duration(time.time() - run_start)
        log.event('done', f"done: {iter_num} iterations in {took}, best val loss {best_val_loss:.4f}, "
                  f"{iter_num * tokens_per_iter:,} tokens seen ({(iter_num - start_iter) * tokens_per_iter:,} in "
                  f"this run), {memory.peak_memory(rt, peak_estimate)}"
                  + (f"\n{runtime.describe_compile()} ({compile_scope})" if rt.compile else ''),
                  iter=iter_num, best_val_loss=best_val_loss, seconds=time.time() - run_start,
                  **memory.peak_memory_gb(rt, peak_estimate), **(runtime.compile_counts() if rt.compile else {}))
        if os.path.exists(ckpt_path):
            print(f"checkpoint: {checkpoints.describe(ckpt_path)}; sample from it: python sample.py "
                  f"--out_dir={out_dir}; plot the losses: python plot.py --out_dir={out_dir}")
log.close()
if rt.ddp:  # the group torn down while the interpreter is whole: left to the exit, it can abort
    model = loss = None  # DDP, and the last loss's graph that runs through its hooks: leave_group frees them
    distributed.leave_group(rt)
# a run asked to stop during its final evaluation has finished, but exits as a stopped one does
sys.exit({'finished': stop.exit_code() if stop.requested else 0, 'stopped': stop.exit_code(), 'diverged': 1,
          'write failed': 1}[ended])
