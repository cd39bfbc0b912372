"""
torchrun's processes: joining and leaving the process group, values every rank agrees on,
stopping together, and sharded data parallelism (PyTorch's FSDP2).

FSDP: each of N ranks keeps 1/N of the weights, the gradients and the AdamW state, where DDP
keeps all of them on every rank. Checkpoints stay in the one-process format, so that a run can
move between one process, DDP and FSDP, and sample.py, export_hf.py and the original nanoGPT
read them: whole tensors, the optimizer's state keyed by parameter index, gathered to rank 0's
CPU one tensor at a time. torch.distributed's FSDP modules take half a second to import, so they
are imported only where FSDP is used, not in every run of train.py.
"""

import atexit
import datetime
import functools
import gc
import hashlib
import ipaddress
import os
import re
import signal
import socket
import struct
import sys
import time
import uuid
import warnings

import torch

from nanogpt.report import fail, first_line

def torchrun_ranks():
    """(under torchrun, rank, local rank, world size) from torchrun's environment; (False, 0, 0, 1) without it."""
    if int(os.environ.get('RANK', -1)) == -1:
        return False, 0, 0, 1
    return True, int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])


def join_group(device, backend='auto', timeout_s=600):
    """Join torchrun's process group from this rank's device: nccl on CUDA, gloo elsewhere ('auto').
    Returns the backend and how many times torchrun has started the group before in this job (its
    --max-restarts after a rank failed). No collective waits longer than timeout_s for the others:
    then this rank names the ranks that did not answer and stops (exit status 2), so that torchrun
    can start the group again. leave_group below tears it down."""
    if device.startswith('mps'):
        fail("DDP is not supported on MPS; use --device=cpu with torchrun, or drop torchrun")
    if backend == 'auto':
        backend = 'nccl' if device.startswith('cuda') else 'gloo'
    several_hosts = os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE']) != os.environ['WORLD_SIZE']
    if several_hosts:
        reach_master(timeout_s, backend)
    timeout = datetime.timedelta(seconds=timeout_s)
    job_store, rank, world_size = next(torch.distributed.rendezvous('env://', timeout=timeout))
    # torchrun hands every start of the group the same store, holding the keys of the starts before,
    # whose dead ranks' addresses gloo waited on for good: each start works under keys of its own
    store = torch.distributed.PrefixStore(_fresh_prefix(job_store, rank, world_size, timeout_s), job_store)
    if rank == 0:
        store.set('starts before', str(job_store.add('nanogpt starts', 1) - 1))
    restarts = int(store.get('starts before'))
    sys.excepthook = functools.partial(_stop_on_lost_ranks, store, rank, world_size, timeout_s)
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return backend, restarts


def _fresh_prefix(store, rank, world_size, timeout_s):
    """A key prefix that the ranks of this start of the group agree on and no earlier start used.
    torchrun's TORCHELASTIC_RESTART_COUNT cannot be it: a host whose agent restarts its workers
    because another host's failed counts no restart. Each rank posts a random nonce; the prefix is
    the hash of all ranks' nonces, once every rank has posted the same hash (an earlier start's
    nonces and hashes, still in the store, never match this start's)."""
    store.set(f'nonce {rank}', uuid.uuid4().hex)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        prefix = hashlib.sha256(b' '.join(store.get(f'nonce {r}') for r in range(world_size))).hexdigest()[:16]
        store.set(f'prefix {rank}', prefix)
        if all(store.get(f'prefix {r}').decode() == prefix for r in range(world_size)):
            return prefix
        time.sleep(0.1)
    fail(f"the {world_size} ranks did not all start within dist_timeout={timeout_s} s", every_rank=True)


def reach_master(timeout_s, backend):
    """On several hosts, before joining: the master's store must be reachable from here, and gloo must
    talk on the interface that reaches it, or the ranks wait on each other without a word."""
    host, port = os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT'])
    # torchrun's agent holds the store, up before any worker starts: a refusal will not pass
    agent_store = os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True'
    deadline = time.time() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(10, timeout_s)) as connection:
                own_address, master_address = connection.getsockname()[0], connection.getpeername()[0]
            break
        except OSError as e:
            if agent_store or time.time() > deadline:
                fail(f"cannot reach the master's store at {host}:{port} from this host ({e.strerror or e}): "
                     f"start torchrun on every host with --rdzv-endpoint=<an address all hosts reach>:PORT, "
                     f"--local-addr=<this host's address>, and --rdzv-conf=is_host=1 on the endpoint's host "
                     f"(docs/distributed.md, Several machines)", every_rank=True)
            time.sleep(1)
    # a master on loopback: every "host" is a process group on this machine, and loopback joins them
    if backend == 'gloo' and not os.environ.get('GLOO_SOCKET_IFNAME') and \
            not ipaddress.ip_address(master_address).is_loopback:
        interface = _interface_with(own_address)
        if interface is None or ipaddress.ip_address(own_address).is_loopback:
            fail(f"this host reaches the master {host} through {own_address}, which other hosts cannot reach: "
                 f"start torchrun with --local-addr=<this host's address the others reach>, or set "
                 f"GLOO_SOCKET_IFNAME to the network interface that joins the hosts", every_rank=True)
        os.environ['GLOO_SOCKET_IFNAME'] = interface
        if os.environ.get('LOCAL_RANK') == '0':
            print(f"gloo: GLOO_SOCKET_IFNAME={interface} ({own_address}, the interface that reaches the master "
                  f"{host}); set it yourself to choose another", flush=True)


def _interface_with(address):
    """The name of the network interface that holds an IPv4 address (Linux), or None."""
    try:
        import fcntl
    except ImportError:
        return None
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:  # SIOCGIFADDR: the interface's address, bytes 20-24 of the struct ifreq it fills
                request = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack('256s', name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(request[20:24]) == address:
            return name
    return None


def _stop_on_lost_ranks(store, rank, world_size, timeout_s, kind, error, trace):
    """sys.excepthook of a rank in the group: a collective that failed (it timed out, or a rank's
    process or link is gone) ends this rank with one line that names the ranks that did not answer;
    any other error is Python's to report."""
    from_the_group = isinstance(error, torch.distributed.DistError) or isinstance(error, RuntimeError) and \
        any(word in str(error) for word in ('gloo', 'Gloo', 'NCCL', 'Timed out', 'Connection'))
    if not from_the_group:
        return sys.__excepthook__(kind, error, trace)
    # every rank still alive checks in: they all meet the failure within about a second (the timeout
    # started with the same collective, a lost peer's connections close at once); the rest are lost
    try:
        store.set(f'alive-{rank}', '1')
        deadline = time.time() + min(3, timeout_s)
        while time.time() < deadline and not store.check([f'alive-{r}' for r in range(world_size)]):
            time.sleep(0.2)
        lost = [r for r in range(world_size) if not store.check([f'alive-{r}'])]
        lost = f"rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} did not answer" if lost else \
            "the group failed"
    except Exception:
        lost = "the other ranks did not answer (nor did their store)"
    why = re.sub(r'^\[[^\]]*\]\s*', '', first_line(error))  # gloo's source file and line: not the user's business
    # to the real stderr: torch's hook around this one holds sys.stderr back until the hook returns, which it does not
    print(f"{os.path.basename(sys.argv[0])}: rank {rank}: {lost} ({why}); stopping, so that "
          f"torchrun --max-restarts can start the group again (it resumes from the latest checkpoint); "
          f"dist_timeout={timeout_s} s bounds the wait", file=sys.__stderr__, flush=True)
    atexit._run_exitfuncs()  # the lock, the metrics file: what a normal exit does
    os._exit(2)  # not the interpreter's teardown, whose process-group destructor can wait on the lost rank


def all_ranks_mean(value, runtime):
    """The mean of a float over all DDP ranks (the value itself without DDP)."""
    if not runtime.ddp:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    torch.distributed.all_reduce(t)
    return t.item() / runtime.world_size


def any_rank(flags, runtime):
    """Whether each flag (a bool or a one-element tensor on the device) is set on any rank, as bools.
    This waits for the device (and, under DDP, for every rank), so training calls it only at its
    checks: log lines and evaluations."""
    flags = torch.stack([torch.as_tensor(flag, device=runtime.device).reshape(()).float() for flag in flags])
    if runtime.ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return [value > 0 for value in flags.tolist()]


def gather_from_ranks(obj, runtime):
    """A list of obj from every rank, in rank order (all ranks must call this together)."""
    if not runtime.ddp:
        return [obj]
    gathered = [None] * runtime.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def leave_group(runtime):
    """Tear torchrun's process group down on every rank together: a rank that leaves while another
    is still finishing a collective makes gloo abort that process at exit ("terminate called
    without an active exception"; benchmarks/fsdp.py --measure=memory hit it in 4 of 6 runs without this).
    DDP sits in reference cycles, its hooks holding what the caller let go: freed first."""
    gc.collect()
    if runtime.ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


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

    def exit_code(self):
        return 128 + signal.Signals[self.requested or 'SIGTERM'].value


def weights_digest(model):
    """A hash of every parameter's bytes, to check that DDP ranks hold the same model."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_weights_agree(model, runtime):
    """DDP's promise, checked at the end of a run: every rank holds the same weights (rank 0 says so)."""
    digests = gather_from_ranks(weights_digest(model), runtime)
    if runtime.master:
        print(f"weights identical on all {runtime.world_size} ranks" if len(set(digests)) == 1 else
              f"WARNING: the ranks' weights differ: {digests}")


def check_fsdp_setting(fsdp, device, optimizer='adamw', onednn='auto'):
    """Before torchrun's group is set up: FSDP needs torchrun, a CUDA GPU or the CPU, an optimizer
    whose update of a parameter can be computed from that parameter's rows alone, and PyTorch's own
    linear layers (oneDNN's are not tried on sharded weights)."""
    if not fsdp:
        return
    if device.split(':')[0] == 'mps':
        fail("--fsdp=True does not run on MPS (torch has no process group for it); train with one "
             "process on MPS, or use --device=cpu under torchrun")
    if 'RANK' not in os.environ:
        fail("--fsdp=True shards the model across torchrun's processes: launch with torchrun --standalone "
             "--nproc_per_node=N train.py ..., or drop --fsdp to train in one process")
    if optimizer != 'adamw':
        # Muon orthogonalises whole matrices; FSDP gives each rank a slice of rows of each one
        fail(f"--fsdp=True works with optimizer='adamw' only: {optimizer} needs whole weight matrices, "
             f"which FSDP splits across ranks; drop --fsdp (DDP) or use --optimizer=adamw")
    if onednn is True:
        fail("--fsdp=True runs PyTorch's own linear layers, not oneDNN's; drop --onednn=True (or --fsdp)")


def shard(model, runtime):
    """Wrap every Block, then the whole GPT (embeddings, final norm, head), with fully_shard on a
    mesh of all ranks. The parameters become DTensors holding this rank's rows, on runtime.device.
    Call it before creating the optimizer, which must see the sharded parameters."""
    if runtime.dtype == 'float16':
        # float16 needs loss scaling; torch's sharded loss scaler and its fused AdamW do not work
        # together (torch 2.13), and a plain scaler would let ranks disagree on skipping a step
        fail("--fsdp=True trains in bfloat16 or float32, not float16; use --dtype=bfloat16 where the GPU "
             "has it, --dtype=float32, or DDP (drop --fsdp) for float16")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(runtime.device_type, (runtime.world_size,))
    # each rank drew its own random init (the seed differs per rank, for dropout): all take rank 0's,
    # as DDP does, one tensor at a time through the device (nccl cannot send from the CPU)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            on_device = tensor.to(runtime.device)
            torch.distributed.broadcast(on_device, src=0)
            tensor.copy_(on_device)
    # In bfloat16 the all-gathered weights, the matmuls and the activations are in that
    # dtype; the shards AdamW updates stay float32, and gradients are reduced (and accumulated
    # between micro-steps) in float32. Autocast stays on as under DDP: with weights already in
    # low precision it casts no matmul input, and it keeps layer norm, softmax and the loss in
    # float32, where bfloat16 logits would round each batch's loss to ~0.02.
    policy = MixedPrecisionPolicy(param_dtype=runtime.ptdtype, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # the root's weights (embeddings, tied head) are needed again first thing in backward
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    # FSDP warns once that the logits it returns are a view, which an in-place op could break;
    # the training loop only ever reads them
    warnings.filterwarnings('ignore', message='FSDP2-wrapped module .* returned a view tensor')
    return model


def local(tensor):
    """This rank's part of a sharded tensor (the tensor itself when it is not sharded)."""
    dtensor = sys.modules.get('torch.distributed.tensor')  # not imported yet: nothing is sharded
    return tensor.to_local() if dtensor and isinstance(tensor, dtensor.DTensor) else tensor


def parameter_names(model, optimizer):
    """The parameters' names in the optimizer's order: position i is what index i means in a
    one-process optimizer.state_dict(); torch's distributed state dicts key by name instead."""
    names = {p: name for name, p in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group['params']]


def full_state_dicts(model, optimizer):
    """The model's and the optimizer's state dicts as one process holds them, on rank 0's CPU
    (empty dicts on the other ranks). Each tensor is gathered and moved to the CPU in turn, so no
    GPU ever holds more than one whole tensor. Every rank must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    model.reshard()  # the root stays unsharded after an evaluation's forward; the state dicts want the shards
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if not model_state:
        return model_state, optimizer_state
    # tied weights (wte and lm_head) come back as two gathered copies: one tensor again, as in
    # model.state_dict(), so that the file holds it once
    first_key = {}
    for key, value in model.state_dict(keep_vars=True).items():
        model_state[key] = model_state[first_key.setdefault(id(value), key)]
    index = {name: i for i, name in enumerate(parameter_names(model, optimizer))}
    optimizer_state = {
        'state': {index[name]: state for name, state in optimizer_state['state'].items()},
        'param_groups': [{**group, 'params': [index[name] for name in group['params']]}
                         for group in optimizer_state['param_groups']]}
    return model_state, optimizer_state


def load_optimizer_state(model, optimizer, state):
    """Load a one-process optimizer state dict (saved by one process, DDP or FSDP) into the
    sharded optimizer: every rank reads the whole state (on the CPU) and keeps its own rows."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = parameter_names(model, optimizer)
    by_name = {'state': {names[i]: s for i, s in state['state'].items()},
               'param_groups': [{**group, 'params': [names[i] for i in group['params']]}
                                for group in state['param_groups']]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
