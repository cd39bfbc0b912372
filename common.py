"""
Plumbing shared by the scripts, kept out of the math and out of the training loop:
one-line errors for bad input, device/dtype/DDP setup, datasets on disk, checkpoint I/O
and tokenizers.
"""
import ctypes
import functools
import hashlib
import json
import math
import os
import pickle
import platform
import random
import resource
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch

from model import GPT, PRETRAINED, GPTConfig

CKPT_NAME = 'ckpt.pt'  # the checkpoint train.py writes and sample.py reads, as in the original
LAST_NAME = 'last.pt'  # the latest state, written when a run is stopped early, for resuming
MODEL_SHAPE_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')


def fail(message, every_rank=False):
    """Bad input, not a bug: say what to do in one line on stderr and exit with status 2.
    Under DDP every rank finds the same mistake, so only rank 0 says it, unless the
    mistake is one rank's own (every_rank)."""
    rank = int(os.environ.get('RANK', 0))
    if rank == 0 or every_rank:
        prefix = f"[rank {rank}] " if rank else ''
        print(f"{prefix}{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# -----------------------------------------------------------------------------
# device, dtype, compile and DDP

def resolve_device(device):
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    try:
        kind, index = torch.device(device).type, torch.device(device).index
    except RuntimeError:
        fail(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == 'cuda' and not torch.cuda.is_available():
        fail(f"--device={device} but this machine has no CUDA GPU; use --device=cpu (or auto)")
    if kind == 'cuda' and index is not None and index >= torch.cuda.device_count():
        fail(f"--device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == 'mps' and not torch.backends.mps.is_available():
        fail(f"--device={device} but MPS is not available here; use --device=cpu (or auto)")
    if kind not in ('cpu', 'cuda', 'mps'):
        fail(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype, device_type):
    """'auto' is bfloat16 where CUDA supports it, else float16 on CUDA; float32 on CPU and MPS."""
    if dtype == 'auto':
        if device_type == 'cuda':
            return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        return 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        fail("--dtype=bfloat16 but this GPU does not support it; use --dtype=float16 (or auto)")
    return dtype


def resolve_compile(compile, device_type):
    """'auto' compiles on CUDA only: elsewhere the minute of compiling rarely pays for itself."""
    if compile == 'auto':
        return device_type == 'cuda'
    if not isinstance(compile, bool):
        fail(f"--compile takes auto, True or False, not {compile!r}")
    return compile


def keep_freed_memory():
    """Stop glibc from handing large freed blocks back to the OS. By default each new activation
    of more than ~128 KB is fresh memory that the kernel zeroes page by page: ~800 page faults a
    step in the laptop recipe, which slowed its biggest matmuls by a third. CPU-only; a no-op
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def resolve_onednn(onednn, device_type, dtype, compile=False):
    """'auto' is on for float32 on x86-64 CPUs, where oneDNN's kernels are there and pay, unless the
    model is compiled (inductor cannot lower oneDNN's linear with weights that change)."""
    usable = (device_type == 'cpu' and dtype == 'float32' and not compile and torch.backends.mkldnn.is_available()
              and platform.machine().lower() in ('x86_64', 'amd64'))
    if onednn == 'auto':
        return usable
    if not isinstance(onednn, bool):
        fail(f"--onednn takes auto, True or False, not {onednn!r}")
    if onednn and not usable:
        fail("--onednn=True needs an x86-64 CPU, --dtype=float32, --compile=False and a torch built with "
             "oneDNN; use --onednn=auto")
    return onednn


def onednn_linear(x, weight, bias=None):
    """x @ weight.T + bias in oneDNN (PyTorch's CPU linear op without post-ops)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


class OneDNNLinear(torch.autograd.Function):
    """nn.Linear's math, with all three of its matmuls in oneDNN.

    PyTorch's CPU matmuls go to MKL, which runs its AVX2 code on AMD processors; oneDNN uses
    AVX-512 wherever the CPU has it, which doubles the float32 matmul rate of these Zen machines.
    The forward and the input gradient are oneDNN's linear (x @ W.T, and grad @ W as a linear
    with W.T for weight). The weight gradient, grad.T @ x, sums over the batch*time rows that
    are the leading dimension of both; as a linear it would need both transposed, but it is
    exactly the weight gradient of a 1x1 convolution over those rows, a kernel oneDNN runs
    straight from row-major data (read as channels-last). Same results to float32 rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        (n_out, n_in), rows = weight.shape, grad_out.numel() // weight.size(0)
        grad = grad_out.reshape(rows, n_out).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad_out, weight.t())
        if ctx.needs_input_grad[1]:
            as_image = lambda t, channels: t.t().reshape(1, channels, 1, rows)  # (rows, C) read as NCHW channels-last
            weight_shape = torch.empty(n_out, n_in, 1, 1, memory_format=torch.channels_last)  # only its shape is read
            grad_w = torch.ops.aten.convolution_backward(
                as_image(grad, n_out), as_image(x.reshape(rows, n_in).contiguous(), n_in), weight_shape, None,
                [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1].view(n_out, n_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def onednn_linear_forward(linear, x):
    return OneDNNLinear.apply(x, linear.weight, linear.bias)


def use_onednn_linears(model):
    """Run every nn.Linear of model through OneDNNLinear (state_dict and checkpoints unchanged)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = functools.partial(onednn_linear_forward, module)
    return model


def place_model(model, runtime):
    """model on the runtime's device, its Linear layers in oneDNN where the runtime says so."""
    model.to(runtime.device)
    return use_onednn_linears(model) if runtime.onednn else model


def setup_runtime(device, dtype, compile, backend='auto', seed=1337, onednn='auto'):
    """Everything about where and how the math runs, for train.py, sample.py and bench.py.

    Under torchrun (RANK is set) this joins the process group, puts each rank on its own
    device (cuda:LOCAL_RANK, or the CPU) and picks nccl on CUDA, gloo elsewhere.
    """
    rank, local_rank, world_size = 0, 0, 1
    ddp = int(os.environ.get('RANK', -1)) != -1
    if ddp:
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        world_size = int(os.environ['WORLD_SIZE'])
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
    device = resolve_device(device)
    if ddp:
        if device.startswith('mps'):
            fail("DDP is not supported on MPS; use --device=cpu with torchrun, or drop torchrun")
        if backend == 'auto':
            backend = 'nccl' if device.startswith('cuda') else 'gloo'
        if device.startswith('cuda'):
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
    device_type = torch.device(device).type
    if device_type == 'cpu':
        keep_freed_memory()
    dtype = resolve_dtype(dtype, device_type)
    compile = resolve_compile(compile, device_type)
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    torch.manual_seed(seed + rank)  # ranks differ in dropout masks
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return SimpleNamespace(
        ddp=ddp, rank=rank, local_rank=local_rank, world_size=world_size, master=rank == 0,
        device=device, device_type=device_type, dtype=dtype, backend=backend,
        compile=compile, onednn=resolve_onednn(onednn, device_type, dtype, compile),
        autocast=nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=ptdtype),
    )


# dense (no sparsity) peak TFLOPS of common GPUs: (bfloat16/float16 tensor cores, TF32 tensor cores).
# float32 training uses the TF32 figure, since matmuls run in TF32 here. The first name found in the
# device's name wins; None is a GPU whose figure is not known here (no MFU rather than a wrong one).
GPU_PEAK_TFLOPS = [
    ('H100 PCIe', (756, 378)), ('H100 NVL', (835, 418)), ('H100', (989, 495)), ('H200', (989, 495)),
    ('B200', (2250, 1100)), ('A100', (312, 156)), ('A10G', None), ('A10', (125, 62.5)),
    ('L40S', (362, 183)), ('L4', (121, 60)), ('RTX 4090', (165, 83)), ('RTX 3090', (71, 36)),
    ('V100', (125, 15.7)), ('T4', (65, 8.1)),
]


def peak_flops(device='cpu', dtype='float32'):
    """The FLOP/s that MFU is measured against: the table above for GPUs (None for one it does
    not know), and for a CPU a measured float32 matmul rate."""
    device_type = torch.device(device).type
    if device_type == 'cuda':
        name = torch.cuda.get_device_name(device)
        peaks = next((peaks for key, peaks in GPU_PEAK_TFLOPS if key in name), None)
        return None if peaks is None else (peaks[1] if dtype == 'float32' else peaks[0]) * 1e12
    if device_type == 'cpu':
        return measured_cpu_flops()
    return None


@functools.lru_cache(maxsize=None)
def measured_cpu_flops(n=1024, seconds=0.1):
    """The fastest float32 matmul rate this CPU gives torch, MKL's or oneDNN's, with torch's
    threads (the best single matmul over 0.1 s of each, measured once per process)."""
    generator = torch.Generator().manual_seed(0)  # not the global RNG: training's random state is untouched
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    matmuls = [lambda: a @ b]
    if resolve_onednn('auto', 'cpu', 'float32'):
        matmuls.append(lambda: onednn_linear(a, b))
    rates = []
    for matmul in matmuls:
        matmul()  # warm up
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            matmul()
            rates.append(2 * n ** 3 / (time.perf_counter() - t))
    return max(rates)


def all_ranks_mean(value, runtime):
    """The mean of a float over all DDP ranks (the value itself without DDP)."""
    if not runtime.ddp:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    torch.distributed.all_reduce(t)
    return t.item() / runtime.world_size


def gather_from_ranks(obj, runtime):
    """A list of obj from every rank, in rank order (all ranks must call this together)."""
    if not runtime.ddp:
        return [obj]
    gathered = [None] * runtime.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


class GracefulStop:
    """Ctrl-C or SIGTERM asks the training loop to stop after the current step and save; a
    second Ctrl-C aborts at once. (torchrun answers Ctrl-C with a SIGTERM to its workers;
    that one is not taken as the second.)"""

    def __init__(self):
        self.requested = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested == 'SIGINT' and name == 'SIGINT':
            print("\nsecond Ctrl-C: stopping now, without saving", file=sys.stderr, flush=True)
            os._exit(130)
        if self.requested is None:
            self.requested = name
            print(f"\n{name}: stopping after this step to save a checkpoint (Ctrl-C again aborts at once)",
                  file=sys.stderr, flush=True)

    def agreed(self, runtime):
        """True when any rank was asked to stop, so that all stop at the same step."""
        if not runtime.ddp:
            return self.requested is not None
        flag = torch.tensor([float(self.requested is not None)], device=runtime.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item() > 0

    def exit_code(self):
        return 128 + signal.Signals[self.requested or 'SIGTERM'].value


# -----------------------------------------------------------------------------
# datasets: train.bin / val.bin (uint16 token ids) and an optional meta.pkl

def dataset_paths(data_dir):
    return {split: os.path.join(data_dir, f'{split}.bin') for split in ('train', 'val')}


def check_dataset(data_dir, dataset):
    """Check that a dataset is prepared; return its meta.pkl contents, or None without one."""
    prepare = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', dataset, 'prepare.py')
    hint = f"run python {os.path.relpath(prepare)} first" if os.path.exists(prepare) else \
        f"put train.bin and val.bin (uint16 token ids) in {data_dir}"
    if not os.path.isdir(data_dir):
        fail(f"dataset folder {data_dir} does not exist; {hint}")
    for path in dataset_paths(data_dir).values():
        if not os.path.exists(path):
            fail(f"{path} is missing, the dataset is not prepared; {hint}")
        if os.path.getsize(path) % 2:
            fail(f"{path} has an odd number of bytes, so it is not uint16 token ids; prepare it again")
    return read_meta(os.path.join(data_dir, 'meta.pkl'), hint)


def read_meta(path, hint="prepare the dataset again"):
    """A character vocabulary (meta.pkl: vocab_size, stoi, itos), or None where there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, 'rb') as f:
            meta = pickle.load(f)
        int(meta['vocab_size'])
    except Exception as e:
        fail(f"{path} is unreadable ({type(e).__name__}); {hint}")
    return meta


FULL_SCAN_BYTES = 1 << 30  # .bin files up to this size are scanned for bad token ids before training


def check_bins(paths, block_size, vocab_size):
    """Each split must hold a whole block plus its target, and (if small enough to scan) no
    token id the model cannot embed; larger files are checked batch by batch instead."""
    for path in paths.values():
        tokens = os.path.getsize(path) // 2
        if tokens < block_size + 1:
            fail(f"{path} holds {tokens} tokens, fewer than block_size + 1 = {block_size + 1}; "
                 f"use a smaller --block_size or more data")
        if tokens * 2 <= FULL_SCAN_BYTES and max_token(path) >= vocab_size:
            fail(f"{path} has token ids >= the model's vocab_size ({vocab_size}); "
                 f"prepare the dataset again or train a model with a larger vocabulary")


def load_blocks(path, starts, block_size, runtime):
    """Blocks of block_size + 1 tokens starting at starts, from a memory-mapped .bin, on the device.
    The memmap is opened per call, so that pages already read do not pile up in resident memory;
    on CUDA the copy goes through pinned memory and overlaps with compute."""
    data = np.memmap(path, dtype=np.uint16, mode='r')
    tokens = torch.from_numpy(data[np.asarray(starts)[:, None] + np.arange(block_size + 1)].astype(np.int64))
    if runtime.device_type == 'cuda':
        return tokens.pin_memory().to(runtime.device, non_blocking=True)
    return tokens.to(runtime.device)


def max_token(path, chunk_tokens=1 << 24):
    """The largest token id in a .bin file, read in bounded chunks rather than all at once."""
    largest = 0
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_tokens * 2):
            largest = max(largest, int(np.frombuffer(chunk, dtype=np.uint16).max()))
    return largest


def ensure_writable(out_dir):
    """Fail now, not after hours of training, when checkpoints could not be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError as e:
        fail(f"out_dir {out_dir} is not writable ({e.strerror}); choose another with --out_dir=PATH")


class MetricsLog:
    """out_dir/metrics.jsonl: one JSON object per log or eval event, appended across resumes.

    On resume, events after the checkpoint's iteration are dropped first: that stretch is
    about to be trained again, and the file should read as one run."""

    def __init__(self, out_dir, resume_iter=None):
        self.path = os.path.join(out_dir, 'metrics.jsonl')
        if resume_iter is not None and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get('iter', 0) <= resume_iter]
            with open(self.path + '.tmp', 'w') as f:
                f.writelines(kept)
            os.replace(self.path + '.tmp', self.path)
        elif resume_iter is None and os.path.exists(self.path):
            os.remove(self.path)  # a new run in this out_dir starts a new record
        self.file = open(self.path, 'a')

    def write(self, **event):
        self.file.write(json.dumps({**event, 'time': round(time.time(), 3)}) + '\n')
        self.file.flush()

    def close(self):
        self.file.close()


def read_text(input_file, default_file, url):
    """The text of input_file; without one, of default_file, first downloaded from url if missing."""
    if not input_file and not os.path.exists(default_file):
        import requests
        print(f"downloading {url}")
        try:
            response = requests.get(url, timeout=30)
            response.raise_for_status()
        except requests.RequestException as e:
            fail(f"could not download {url} ({type(e).__name__}); download it yourself and save it "
                 f"as {os.path.relpath(default_file)}{_shared_copy_hint(url)}")
        with open(default_file, 'w', encoding='utf-8') as f:
            f.write(response.text)
    path = input_file or default_file
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path} as UTF-8 text ({e.strerror if isinstance(e, OSError) else e})")


def _shared_copy_hint(url):
    # machines without internet keep a copy of tiny Shakespeare in ../shared/data beside the repo
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared', 'data',
                          'tinyshakespeare', 'input.txt')
    return f" (a copy is at {os.path.relpath(shared)})" if 'tinyshakespeare' in url and os.path.exists(shared) else ''


def write_bins(out_dir, train_ids, val_ids):
    """train.bin and val.bin: token ids as raw uint16, the original's format."""
    os.makedirs(out_dir, exist_ok=True)
    for name, ids in (('train', train_ids), ('val', val_ids)):
        ids = np.asarray(ids)
        if ids.size and ids.max() >= 2 ** 16:
            fail(f"token id {ids.max()} does not fit in uint16 (the .bin format); use a smaller vocabulary")
        ids.astype(np.uint16).tofile(os.path.join(out_dir, f'{name}.bin'))
    print(f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens")


# -----------------------------------------------------------------------------
# checkpoints

def save_checkpoint(checkpoint, path):
    """Write atomically: a crash or kill -9 mid-save leaves the previous file intact."""
    tmp = f"{path}.tmp"
    with open(tmp, 'wb') as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, device='cpu'):
    """Load a checkpoint of ours or of the original nanoGPT, or stop with a clear error."""
    if not os.path.exists(path):
        fail(f"no checkpoint at {path}; train one first (python train.py ...) "
             f"or point --out_dir at the folder that holds {CKPT_NAME}")
    try:
        with warnings.catch_warnings():  # the failure below says it better than torch's warnings
            warnings.simplefilter('ignore')
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses code objects: safer than running them
        fail(f"{path} is not a readable checkpoint (it holds Python objects, not just tensors and plain "
             f"values); load only checkpoints written by this repo or the original nanoGPT")
    except Exception as e:  # truncated zip, not a torch file at all
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        fail(f"{path} is not a readable checkpoint ({reason}); it may be truncated or "
             f"written by another program: train again or restore a good copy")
    if not isinstance(checkpoint, dict) or not {'model', 'model_args'} <= checkpoint.keys():
        fail(f"{path} is not a nanoGPT checkpoint (it lacks 'model' and 'model_args')")
    return checkpoint


def model_from_checkpoint(checkpoint, path, **overrides):
    """Build the GPT a checkpoint describes and load its weights (dropout may be overridden)."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_extra_args', {}), **overrides}
    try:
        model = GPT(GPTConfig(**args))
        # checkpoints saved from a torch.compile'd model carry this prefix on every key
        state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        fail(f"{path} does not hold a model this code can build ({str(e).splitlines()[0][:200]})")
    return model


def is_pretrained(init_from):
    return init_from in PRETRAINED or os.path.isdir(init_from)


def pretrained_model(name_or_dir, dropout=0.0):
    """GPT.from_pretrained with a clear error for each way it can go wrong."""
    try:
        return GPT.from_pretrained(name_or_dir, dict(dropout=dropout))
    except ImportError:
        fail("loading GPT-2 weights needs transformers: pip install transformers")
    except ValueError as e:
        fail(str(e))
    except OSError as e:  # not downloadable (offline), or a folder without a model in it
        fail(f"could not load {name_or_dir} ({str(e).splitlines()[0][:160]}); OpenAI's weights download "
             f"from the Hugging Face hub once, or give a folder saved with save_pretrained")


def rng_state():
    """Every random state that drives batches and dropout, to make a resume exact. Plain
    lists and tensors only, so checkpoints load with torch.load(weights_only=True)."""
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
        'torch': torch.get_rng_state(),
        # this process's GPU only: asking for every GPU's state would open a context on each of them
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state):
    random.setstate(state['python'])
    kind, key, *rest = state['numpy']
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state['torch'].cpu())
    if isinstance(state['cuda'], torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())


def latest_checkpoint(out_dir):
    """The checkpoint to resume from: ckpt.pt, or last.pt (written when a run is stopped) if
    that one is further along."""
    best, last = os.path.join(out_dir, CKPT_NAME), os.path.join(out_dir, LAST_NAME)
    if not os.path.exists(last):
        return best
    if not os.path.exists(best):
        return last
    try:
        return last if checkpoint_iter(last) > checkpoint_iter(best) else best
    except Exception:
        return best  # unreadable: loading it properly gives the clear error


def checkpoint_iter(path):
    """A checkpoint's iteration, without reading its tensors (memory-mapped)."""
    return torch.load(path, map_location='cpu', mmap=True, weights_only=True)['iter_num']


def weights_digest(model):
    """A hash of every parameter's bytes, to check that DDP ranks hold the same model."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def all_finite(model):
    """True when every parameter is finite: a diverged model is never written over a good one."""
    return all(torch.isfinite(p).all() for p in model.parameters())


# -----------------------------------------------------------------------------
# tokenizers

def load_tokenizer(meta):
    """encode/decode from a dataset's meta.pkl (character level), or GPT-2 BPE without one."""
    if meta is not None:
        stoi, itos = meta['stoi'], meta['itos']

        def encode(text):
            unknown = sorted(set(text) - stoi.keys())
            if unknown:
                fail(f"the prompt has characters this model's vocabulary lacks: {''.join(unknown)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: ''.join(itos[i] for i in ids)
    enc = gpt2_encoding()
    return (lambda text: enc.encode(text, allowed_special={'<|endoftext|>'})), enc.decode


class TextStream:
    """Print a sample as its tokens arrive. Each time, decode all the ids so far and print what is
    new, holding back a trailing incomplete character (a BPE token can end inside one)."""

    def __init__(self, decode, ids, out=sys.stdout):
        self.decode, self.ids, self.out, self.shown = decode, list(ids), out, 0
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


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, or a clear error when it can be neither downloaded nor found cached."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        fail(f"cannot load the GPT-2 BPE tokenizer ({type(e).__name__}); tiktoken downloads it once, or "
             f"set TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's cached copies of its files")


def peak_memory(runtime):
    """This process's peak resident memory (and on CUDA, the most memory torch held on the GPU)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)
    text = f"peak memory {rss / 2**30:.2f} GB"
    if runtime.device_type == 'cuda':
        text += f" (GPU {torch.cuda.max_memory_allocated(runtime.device) / 2**30:.2f} GB)"
    return text


def estimate_seconds(model, tokens_per_iter, iters, eval_tokens, peak):
    """A rough time for a run: forward+backward FLOPs for the training tokens, forward only (a third)
    for the evaluation tokens, at 60% of the peak (what the laptop recipe reaches on a CPU)."""
    return (iters * tokens_per_iter + eval_tokens / 3) * model.flops_per_token() / (0.6 * peak)


def format_count(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def format_duration(seconds):
    if not math.isfinite(seconds):
        return '?'
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
