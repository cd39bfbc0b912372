"""
Where does a training run make the host wait for the device? Runs train.py as `python train.py ...`
would, and counts every read of a tensor's value on the host (Tensor.item, .tolist, bool(), float(),
int(), and .cpu() or .numpy() of a GPU tensor), and on CUDA every synchronization that
torch.cuda.set_sync_debug_mode('warn') reports. Each is put down to the line of train.py's loop it
happened under. Syncs inside the training step (from the micro-step loop to `iter_num += 1`) are
the ones that stall a GPU every iteration: there must be none. Log lines, evaluations and
checkpoints may sync.

$ python benchmarks/count_syncs.py train.py config/train_shakespeare_char.py --max_iters=100 --log_interval=10

Reads made by torch.compile while it compiles (Inductor folds constants such as cross-entropy's
ignore_index by reading them) are the compiler's, not the program's: they happen once, on a cold
compile, and are not counted.

It prints one summary line and exits with 1 when the step synced, else with train.py's own status.
"""
import ast
import atexit
import collections
import os
import runpy
import sys
import warnings

import torch

script = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else 'train.py')
with open(script) as f:
    tree = ast.parse(f.read())
# the step's lines: from the micro-step loop to the increment of iter_num, in the training loop
loop = next(node for node in tree.body if isinstance(node, ast.While))
step_start = next(node.lineno for node in loop.body if isinstance(node, ast.For)
                  and getattr(node.target, 'id', '') == 'micro_step')
step_end = next(node.lineno for node in loop.body if isinstance(node, ast.AugAssign)
                and getattr(node.target, 'id', '') == 'iter_num')
counts = collections.Counter()  # (where, what) -> calls; where is 'step' or 'elsewhere'
in_step_iterations = set()


# a frame of these files is on the stack exactly while Dynamo traces or Inductor compiles (the
# compiled code runs without them)
COMPILER_FILES = tuple(os.path.join(os.path.dirname(torch.__file__), *parts) for parts in
                       (('_dynamo', 'convert_frame.py'), ('_inductor', 'compile_fx.py')))


def compiling(frame):
    while frame is not None:
        if frame.f_code.co_filename in COMPILER_FILES:
            return True
        frame = frame.f_back
    return False


def record(what):
    frame = sys._getframe(2)
    if compiling(frame):
        return
    while frame is not None and not (frame.f_code.co_filename == script and frame.f_code.co_name == '<module>'):
        frame = frame.f_back
    if frame is None:
        return  # before or after the script's own code (start-up inside imports, exit)
    where = 'step' if step_start <= frame.f_lineno <= step_end else 'elsewhere'
    counts[where, what] += 1
    if where == 'step':
        in_step_iterations.add(frame.f_globals.get('iter_num'))


def counting(name, only_off_cpu=False):
    original = getattr(torch.Tensor, name)

    def wrapper(self, *args, **kwargs):
        if not only_off_cpu or self.device.type != 'cpu':
            record(name)
        return original(self, *args, **kwargs)
    setattr(torch.Tensor, name, wrapper)


for method in ('item', 'tolist', '__bool__', '__float__', '__int__'):
    counting(method)
for method in ('cpu', 'numpy'):
    counting(method, only_off_cpu=True)

if torch.cuda.is_available():
    torch.cuda.set_sync_debug_mode('warn')
    warnings.simplefilter('always')
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if 'synchroniz' in str(message):
            record('cuda sync')
        else:
            show(message, category, filename, lineno, file, line)
    warnings.showwarning = showwarning


@atexit.register
def summary():
    in_step = sum(n for (where, _), n in counts.items() if where == 'step')
    elsewhere = sum(n for (where, _), n in counts.items() if where == 'elsewhere')
    kinds = ', '.join(f"{what} {n}" for (where, what), n in sorted(counts.items()) if where == 'step')
    print(f"host syncs: {in_step} inside the training step" + (f" ({kinds}; at iterations "
          f"{sorted(in_step_iterations)[:10]})" if in_step else '') +
          f", {elsewhere} at log lines, evaluations and checkpoints", file=sys.stderr, flush=True)
    if in_step:
        os._exit(1)


sys.argv = [script] + sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name='__main__')
