"""The repo's scripts run as a user runs them, for the benchmarks that drive them."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, cwd):
    """python REPO/script args in cwd; its stdout, or the benchmark stops with the script's stderr."""
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                            cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    if result.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout
