"""
Where does the test suite's time go? A pytest plugin: for each test, the CPU seconds of the test's
process and of every process it waited for (the scripts it ran, torchrun's workers, the compiler's),
and its wall seconds, one JSON line each in results_file; at the end, the totals and the costliest
tests. Wall time alone hides the cause: on 2 cores the suite is bound by CPU, most of it interpreter
starts (`import torch`, and `torch._dynamo`, which torch.optim imports).

$ python -m pytest -p benchmarks.suite_cpu                       # results in /tmp/suite_cpu.jsonl
$ SUITE_CPU_FILE=cold.jsonl TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python -m pytest -p benchmarks.suite_cpu

Under xdist each worker appends its own tests' lines; the summary is the controller's, from the file.
"""
import json
import os
import resource
import tempfile
import time

import pytest

results_file = os.environ.get('SUITE_CPU_FILE', os.path.join(tempfile.gettempdir(), 'suite_cpu.jsonl'))


def cpu_seconds():
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


def pytest_sessionstart(session):
    if not os.environ.get('PYTEST_XDIST_WORKER') and os.path.exists(results_file):
        os.remove(results_file)  # the controller (or a run without xdist) starts the file afresh


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started, cpu = time.time(), cpu_seconds()
    yield  # the test, with its fixtures' setup and teardown
    with open(results_file, 'a') as f:
        f.write(json.dumps({'test': item.nodeid, 'cpu_s': round(cpu_seconds() - cpu, 2),
                            'wall_s': round(time.time() - started, 2)}) + '\n')


def pytest_terminal_summary(terminalreporter):
    if os.environ.get('PYTEST_XDIST_WORKER') or not os.path.exists(results_file):
        return
    with open(results_file) as f:
        rows = sorted((json.loads(line) for line in f), key=lambda row: -row['cpu_s'])
    write = terminalreporter.write_line
    write(f"\nsuite_cpu: {sum(r['cpu_s'] for r in rows):.0f} CPU s and {sum(r['wall_s'] for r in rows):.0f} "
          f"wall s over {len(rows)} tests ({results_file}); the costliest, CPU s / wall s:")
    for row in rows[:15]:
        write(f"  {row['cpu_s']:7.1f} {row['wall_s']:7.1f}  {row['test']}")
