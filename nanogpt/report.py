"""
What a run tells its user: its log lines, metrics.jsonl and wandb, time estimates, readable
numbers, a sample as it is generated; and bad input, reported the same way by every script: one
line on stderr, exit status 2.
"""
import json
import math
import os
import sys
import time


class RunLog:
    """What a training run tells, one call per event: a line on stdout, a record in
    out_dir/metrics.jsonl and, with wandb, a point there. Only rank 0 keeps one (master=False:
    every call does nothing), so the loop need not ask which rank it is on.

    metrics.jsonl holds one JSON object per event, appended across resumes. On resume, events after
    the checkpoint's iteration are dropped first: that stretch is about to be trained again, and the
    file should read as one run. So is the end of the earlier run (its 'done' event, with its time
    and peak memory): the resumed run writes its own."""

    def __init__(self, out_dir, resume_iter=None, master=True, wandb_run_id=None, wandb_init=None):
        self.master, self.wandb, self.wandb_run_id = master, None, wandb_run_id
        if not master:
            return
        self.path = os.path.join(out_dir, 'metrics.jsonl')
        if resume_iter is not None and os.path.exists(self.path):
            with open(self.path) as f:
                events = [(line, json.loads(line)) for line in f if line.strip()]
            kept = [line for line, event in events if event.get('iter', 0) <= resume_iter and event['event'] != 'done']
            with open(self.path + '.tmp', 'w') as f:
                f.writelines(kept)
            os.replace(self.path + '.tmp', self.path)
        elif resume_iter is None and os.path.exists(self.path):
            os.remove(self.path)  # a new run in this out_dir starts a new record
        self.file = open(self.path, 'a')
        if wandb_init is not None:
            import wandb
            self.wandb = wandb
            # the run's id goes into checkpoints, so that a resumed training continues the same wandb run
            self.wandb_run_id = wandb.init(**wandb_init, id=wandb_run_id, resume='allow').id

    def event(self, event, line=None, wandb=None, **values):
        """line printed (if any), values recorded under event, wandb's own names for them sent."""
        if not self.master:
            return
        if line:
            print(line, flush=True)
        self.file.write(json.dumps({'event': event, **values, 'time': round(time.time(), 3)}) + '\n')
        self.file.flush()
        if self.wandb and wandb:
            self.wandb.log({'iter': values['iter'], **wandb}, step=values['iter'])

    def close(self):
        if self.master:
            self.file.close()
            if self.wandb:
                self.wandb.finish()


def read_metrics(out_dir):
    """The events RunLog wrote to out_dir/metrics.jsonl, oldest first."""
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def steady_steps(events, after_iter=20):
    """The training log events past after_iter: the first iterations pay for warm-up and compiling."""
    return [e for e in events if e['event'] == 'train' and e['iter'] > after_iter]


def estimate_seconds(model, tokens_per_iter, iters, eval_tokens, peak):
    """A rough time for a run: forward+backward FLOPs for the training tokens, forward only (a third)
    for the evaluation tokens, at 60% of the peak (what the laptop recipe reaches on a CPU)."""
    return (iters * tokens_per_iter + eval_tokens / 3) * model.flops_per_token() / (0.6 * peak)


def warn_if_slow_on_cpu(model, tokens_per_iter, iters, eval_tokens, peak, dataset):
    """Say so up front when a config meant for a GPU would take more than 15 minutes on this CPU."""
    estimate = estimate_seconds(model, tokens_per_iter, iters, eval_tokens, peak)
    if estimate > 15 * 60:
        cpu_config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config', f'train_{dataset}_cpu.py')
        advice = f"python train.py {os.path.relpath(cpu_config)} takes a few minutes" if os.path.exists(cpu_config) \
            else "a GPU, or a smaller model, batch, block_size or max_iters, would be quicker"
        print(f"WARNING: this looks like a GPU config: about {format_duration(estimate)} on this CPU; {advice}")


def format_count(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def format_duration(seconds):
    if not math.isfinite(seconds):
        return '?'
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def describe_choices(config):
    """The modern recipe's choices a model makes, in a few words: 'rotary, qk_norm, mlp=relu2, ...'."""
    words = {'rotary': 'rotary', 'qk_norm': 'qk_norm', 'tie_weights': 'untied head', 'zero_init': 'zero init'}
    return ', '.join(words.get(name) or f"{name}={value}" for name, value in config.modern_choices().items())


def describe_model(shape, n_params, block_size, optimizer):
    """train.py's start-up line for the model: its size and shape, its modern choices, the optimizer."""
    modern = shape.modern_choices() and f"; modern: {describe_choices(shape)}"
    return f"model: {format_count(n_params)} parameters ({shape.n_layer} layers, {shape.n_head} heads, " \
        f"{shape.n_embd} wide, context {block_size}, vocabulary {shape.vocab_size}){modern or ''}; optimizer: {optimizer}"


def say_diverged(first_iter, last_iter, last_good):
    """train.py's line for a loss that became non-finite somewhere in first_iter..last_iter."""
    when = f"at iteration {last_iter}" if first_iter == last_iter else \
        f"between iterations {first_iter} and {last_iter}"
    print(f"train.py: the loss became non-finite {when}; stopping without saving. Last good checkpoint: "
          f"{last_good}. Lower --learning_rate or check the data, then resume from it", file=sys.stderr, flush=True)


def fail(message, every_rank=False):
    """Bad input, not a bug: say what to do in one line on stderr and exit with status 2.
    Under DDP every rank finds the same mistake, so only rank 0 says it, unless the
    mistake is one rank's own (every_rank)."""
    rank = int(os.environ.get('RANK', 0))
    if rank == 0 or every_rank:
        prefix = f"[rank {rank}] " if rank else ''
        print(f"{prefix}{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def first_line(e):
    """An exception's message cut to one short line, for a one-line error (its type if it has none)."""
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__


class TextStream:
    """Print a sample as its tokens arrive. Each time, decode all the ids so far and print what is
    new, holding back a trailing incomplete character (a BPE token can end inside one)."""

    def __init__(self, decode, ids, out=None):  # None: sys.stdout as it is now, not at import
        self.decode, self.ids, self.out, self.shown = decode, list(ids), out or sys.stdout, 0
        self._show()

    def push(self, token_id):
        self.ids.append(token_id)
        self._show()

    def _show(self):
        text = self.decode(self.ids)
        if not text.endswith('\ufffd'):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)
