"""Runs that survive losing a process or a host. Under torchrun --max-restarts a killed worker's group
starts again and resumes from the run's latest checkpoint, ending with the weights of a run that never
failed; a rank that stops answering is named within dist_timeout; two hosts (network namespaces) train
as one host does; a new run into a used out_dir keeps the earlier run's checkpoint aside."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_MODEL, made_once, run_script, script_env
from nanogpt import checkpoints, distributed, out_dirs, settings

# 2 ranks x 1 micro-step each; a checkpoint every 20 iterations, a log line every one (the test acts on them)
RUN = ['--dataset=tiny', '--out_dir=out', '--max_iters=120', '--eval_interval=20', '--log_interval=1', *TINY_MODEL,
       '--gradient_accumulation_steps=2']
ONE_THREAD = {'OMP_NUM_THREADS': '1'}  # as torchrun gives 2 processes on one host: the same sums everywhere


def torchrun(*options):
    return [sys.executable, '-m', 'torch.distributed.run', *options, str(REPO / 'train.py'), *RUN]


def weights(out_dir):
    return torch.load(out_dir / 'ckpt.pt', weights_only=True)['model']


def identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='session')
def straight(tmp_path_factory, prepared_data):
    """straight('ddp') or straight('fsdp'): the out_dir of a run that never failed, 2 ranks on this host
    (made once per run, when a test first asks for it)."""
    def out_dir(mode):
        def train(folder):
            shutil.copytree(prepared_data, folder / 'data' / 'tiny')
            run_script('train.py', *RUN, f'--fsdp={mode == "fsdp"}', cwd=folder, env=ONE_THREAD,
                       torchrun=['--standalone', '--nproc_per_node=2'])
        return made_once(tmp_path_factory, f'straight-{mode}', train) / 'out'
    return out_dir


@contextlib.contextmanager
def started(command, **popen_args):
    """A job started in a session of its own, killed with its workers if the test ends before it does."""
    proc = subprocess.Popen(command, text=True, start_new_session=True, **popen_args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def workers(agent_pid):
    """{rank: pid} of the workers a torchrun agent started."""
    found = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(stat.read_text().rsplit(')', 1)[1].split()[1]) == agent_pid:  # the parent's pid
                environment = (stat.parent / 'environ').read_bytes().split(b'\0')
                rank = next(int(value[5:]) for value in environment if value.startswith(b'RANK='))
                found[rank] = int(stat.parent.name)
        except (OSError, StopIteration, IndexError, ValueError):  # gone meanwhile, or not a worker
            pass
    return found


def iteration(line):
    return int(line.split()[1].split('/')[0]) if line.startswith('iter ') else -1


def act_during(proc, faults):
    """Read a torchrun job's output; faults: (after this iteration, rank, signal) in turn, each sent once
    the log reaches that iteration in the start of the group after the previous fault. Returns the output
    and, per fault, the seconds from it to the next start's first line (a stopped worker: to the line that
    names it, and then it goes on, for the restart to end it)."""
    lines, waited, pending, sent_at, sig, pid = [], [], list(faults), None, None, None
    for line in proc.stdout:
        lines.append(line)
        if sent_at and (' did not answer (' in line if sig == signal.SIGSTOP else line.startswith('torchrun restart')):
            waited.append(time.time() - sent_at)
            sent_at = None
            if sig == signal.SIGSTOP:  # torchrun would SIGKILL it 30 s after its SIGTERM went unanswered
                os.kill(pid, signal.SIGCONT)
        if pending and sent_at is None and iteration(line) >= pending[0][0]:
            _, rank, sig = pending.pop(0)
            pid = workers(proc.pid)[rank]
            os.kill(pid, sig)
            sent_at = time.time()
    proc.wait(timeout=60)
    return ''.join(lines), waited


# rank 1, then rank 0 (the holder of out_dir's lock), killed as an OOM killer or a lost node would; under
# DDP then rank 1 stopped (a hung GPU, a debugger, a dead link: it holds and does not die)
FAULTS = {'ddp': [(30, 1, signal.SIGKILL), (60, 0, signal.SIGKILL), (90, 1, signal.SIGSTOP)],
          'fsdp': [(30, 1, signal.SIGKILL), (70, 0, signal.SIGKILL)]}


@pytest.mark.slow(60)
@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_workers_killed_or_stopped_and_the_run_ends_with_the_weights_of_one_that_never_failed(
        tmp_path, char_data, straight, mode):
    timeout_s, faults = 15, FAULTS[mode]
    command = torchrun('--standalone', '--nproc_per_node=2', f'--max-restarts={len(faults)}') + \
        [f'--fsdp={mode == "fsdp"}', f'--dist_timeout={timeout_s}']
    with started(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=script_env(ONE_THREAD)) \
            as proc:
        output, waited = act_during(proc, faults)
    assert proc.returncode == 0, output[-5000:]
    restarts = [line for line in output.splitlines() if line.startswith('torchrun restart')]
    print(f"seconds from each fault to the next start's first line (a stop: to the line naming it): {waited}",
          *restarts, sep='\n')
    assert len(restarts) == len(faults) == len(waited), output[-5000:]
    for n, line in enumerate(restarts, 1):
        assert line.startswith(f'torchrun restart {n} (a rank failed): resuming from out/ckpt.pt at iteration ')
        # a kill during a checkpoint's write leaves its .tmp, which the restart's line then names
        assert line.split('; passed over ')[0].endswith(' iterations done again')
    assert 'taking over out/train.lock' in output  # the killed rank 0's lock does not block the restart
    assert not (tmp_path / 'out' / 'previous').exists()  # a restart is the same run, never a new one
    assert 'Traceback' not in output
    if mode == 'ddp':  # the stopped rank is named by the other one within the timeout and a few seconds
        said = [line for line in output.splitlines() if ' did not answer (Timed out waiting ' in line]
        assert len(said) == 1 and said[0].startswith('train.py: rank 0: rank 1 did not answer'), output[-5000:]
        assert f'dist_timeout={timeout_s} s' in said[0] and waited[2] < timeout_s + 30
    assert identical(weights(tmp_path / 'out'), weights(straight(mode)))


def ip(*args):
    subprocess.run(['ip', *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Two hosts on this machine, each with an address of its own: network namespaces joined by a veth
    pair (the same addresses in every test: each pair of namespaces is a network of its own)."""
    if os.geteuid() != 0 or not shutil.which('ip'):
        pytest.skip("two hosts need network namespaces: root and the ip command (iproute2)")
    tag = uuid.uuid4().hex[:8]
    hosts, links, addresses = [f'nanogpt-{tag}-{n}' for n in (0, 1)], [f'ng{tag}{n}' for n in (0, 1)], ['10.0.0.1', '10.0.0.2']
    try:
        for host in hosts:
            ip('netns', 'add', host)
            ip('-n', host, 'link', 'set', 'lo', 'up')
        ip('link', 'add', links[0], 'type', 'veth', 'peer', 'name', links[1])
        for host, link, address in zip(hosts, links, addresses):
            ip('link', 'set', link, 'netns', host)
            ip('-n', host, 'addr', 'add', f'{address}/24', 'dev', link)
            ip('-n', host, 'link', 'set', link, 'up')
        yield hosts, addresses
    except subprocess.CalledProcessError as e:
        pytest.skip(f"network namespaces cannot be made here: {e.stderr.strip()}")
    finally:  # a namespace takes its end of the veth pair with it, and so the pair
        for host in hosts:
            subprocess.run(['ip', 'netns', 'del', host], capture_output=True)
        left = set(hosts) & set(subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout.split())
        assert not left, f"could not remove the namespaces {left}"


def logged_iteration(out_dir):
    """The last iteration a run's metrics.jsonl has a line for (0 before the first)."""
    try:
        with open(out_dir / 'metrics.jsonl') as f:  # its last line may be half written: only whole ones
            return max((json.loads(line)['iter'] for line in f if line.endswith('\n') and '"event": "train"' in line),
                       default=0)
    except OSError:
        return 0


@pytest.mark.slow(60)
def test_two_hosts_train_as_one_host_and_survive_losing_one(tmp_path, char_data, straight, two_hosts):
    hosts, addresses = two_hosts

    def job(mode, port, kill_after=None):
        with contextlib.ExitStack() as jobs:
            return run_job(jobs, mode, port, kill_after)

    def run_job(jobs, mode, port, kill_after):
        procs = []
        for n, (host, address) in enumerate(zip(hosts, addresses)):
            # the endpoint's host holds the rendezvous (is_host: it cannot tell by its hostname), and each
            # host is known by the address the other reaches (--local-addr), not by its hostname
            options = ['--nnodes=2', '--nproc_per_node=1', '--max-restarts=1', '--rdzv-backend=c10d',
                       f'--rdzv-endpoint={addresses[0]}:{port}', f'--rdzv-id={mode}', f'--local-addr={address}',
                       *(['--rdzv-conf=is_host=1'] if n == 0 else [])]
            procs.append(jobs.enter_context(started(
                ['ip', 'netns', 'exec', host, *torchrun(*options), f'--fsdp={mode == "fsdp"}', f'--out_dir={mode}'],
                cwd=tmp_path, stdout=open(tmp_path / f'{mode}{n}.log', 'w'), stderr=subprocess.STDOUT,
                env=script_env(ONE_THREAD))))
        if kill_after:
            deadline = time.time() + 120
            while logged_iteration(tmp_path / mode) < kill_after and time.time() < deadline:
                time.sleep(0.05)
            host_1_worker, = workers(procs[1].pid).values()  # `ip netns exec` became torchrun: same pid
            os.kill(host_1_worker, signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=180)
        outputs = [(tmp_path / f'{mode}{n}.log').read_text() for n in (0, 1)]
        assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
        return ''.join(outputs)

    output = job('ddp', 29400)
    assert 'gloo: GLOO_SOCKET_IFNAME=ng' in output  # each host's own interface, chosen for it
    assert identical(weights(tmp_path / 'ddp'), weights(straight('ddp')))
    output = job('fsdp', 29401, kill_after=30)
    assert 'torchrun restart 1 (a rank failed): resuming from fsdp/ckpt.pt at iteration ' in output
    assert identical(weights(tmp_path / 'fsdp'), weights(straight('fsdp')))


def test_a_resume_with_another_world_size_says_the_batches_change(tmp_path, straight, char_data):
    shutil.copytree(straight('ddp'), tmp_path / 'out')
    result = run_script('train.py', *RUN, '--init_from=resume', '--max_iters=122', cwd=tmp_path)
    assert '2 processes wrote out/ckpt.pt, 1 resume it: the batches differ from iteration 120 on' in result.stdout


def test_a_restart_goes_on_from_the_latest_checkpoint_that_reads(tmp_path, trained, capsys):
    os.chdir(tmp_path)
    # nothing saved before the failure: the run starts again as it was told to
    assert checkpoints.restart_point('empty', 'scratch', 1) == 'scratch'
    assert capsys.readouterr().out == ("torchrun restart 1 (a rank failed): no checkpoint of this run yet; starting "
                                       "again from init_from='scratch'\n")
    # the failure cut a write short; the checkpoint before it is whole (writes are atomic)
    (tmp_path / 'out' / 'ckpt.pt.tmp').write_bytes((tmp_path / 'out' / 'ckpt.pt').read_bytes()[:500])
    assert checkpoints.restart_point('out', 'gpt2', 2) == 'resume'
    assert capsys.readouterr().out == ("torchrun restart 2 (a rank failed): resuming from out/ckpt.pt at iteration 30; "
                                       "0 iterations done again; passed over out/ckpt.pt.tmp (cut short)\n")
    # a damaged latest checkpoint: the previous good one, further back
    shutil.copy(tmp_path / 'out' / 'ckpt.pt', tmp_path / 'out' / 'last.pt')
    (tmp_path / 'out' / 'ckpt.pt').write_bytes(b'not a checkpoint')
    with open(tmp_path / 'out' / 'metrics.jsonl', 'a') as f:
        f.write('{"event": "train", "iter": 37, "loss": 2.0}\n')  # where the failed attempt had got to
    assert checkpoints.restart_point('out', 'scratch', 1) == 'resume'
    assert capsys.readouterr().out.startswith("torchrun restart 1 (a rank failed): resuming from out/last.pt at "
                                              "iteration 30; 7 iterations done again; passed over ")
    assert checkpoints.latest_checkpoint('out') == 'out/last.pt'  # --init_from=resume takes the same


def test_a_new_run_into_a_used_out_dir_keeps_the_earlier_run_aside(tmp_path, trained, capsys, refused):
    os.chdir(tmp_path)
    first = torch.load('out/ckpt.pt', weights_only=True)
    out_dirs.keep_previous_run('out', 'scratch')
    said = capsys.readouterr().out
    assert said == ("out held an earlier run, its checkpoint out/ckpt.pt (iteration 30): moved it to out/previous/ "
                    "(sample or resume it with --out_dir=out/previous); to continue a run instead of starting over, "
                    "use --init_from=resume\n")
    assert sorted(os.listdir('out/previous')) == ['ckpt.pt', 'metrics.jsonl'] and not os.path.exists('out/ckpt.pt')
    assert identical(torch.load('out/previous/ckpt.pt', weights_only=True)['model'], first['model'])
    out_dirs.keep_previous_run('out', 'scratch')  # nothing to keep: nothing said
    assert capsys.readouterr().out == ''
    # one generation: the run before last goes, and the line says so
    shutil.copy('out/previous/ckpt.pt', 'out/ckpt.pt')
    out_dirs.keep_previous_run('out', 'scratch')
    assert '; the run before that one, which was there, is gone;' in capsys.readouterr().out
    shutil.copy('out/previous/ckpt.pt', 'out/ckpt.pt')
    with refused('init_from is this out_dir (out): --init_from=resume continues its run'):
        out_dirs.keep_previous_run('out', 'out')


def test_an_unreachable_master_is_named_not_waited_on_for_good(monkeypatch, refused):
    # a worker of several hosts whose master address leads nowhere (a port nothing listens on)
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', '9')  # discard: nothing listens there
    monkeypatch.setenv('RANK', '1')
    with refused("[rank 1] ", "error: cannot reach the master's store at 127.0.0.1:9 from this host",
                 '--rdzv-conf=is_host=1'):
        distributed.reach_master(timeout_s=2, backend='gloo')


def test_dist_timeout_is_at_least_a_second(refused):
    good = {name: 1 for name in settings.AT_LEAST_ONE + settings.NOT_NEGATIVE} | {'fsdp': False}
    settings.check_training(good)
    with refused('--dist_timeout must be at least 1, not 0'):
        settings.check_training(good | {'dist_timeout': 0})
