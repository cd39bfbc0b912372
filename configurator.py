"""
Settings from config files and the command line, for every script in this repo:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

A script declares its settings as plain module-level globals with defaults, then calls
configure(globals()). Arguments apply left to right, so later ones win: a config file is
plain Python run with the settings in scope, and --key=value sets one value, parsed as a
Python literal (3, 3e-4, True, 'x') or else taken as a string. A setting keeps the type of
its default (an int is fine for a float; true/false/True/False for a bool; a default of
'auto' also takes True/False). Mistakes stop the script before any work with one line on
stderr and exit status 2: a typo should not cost a night of training on the wrong settings.
"""
import ast
import difflib
import io
import os
import sys
import tokenize

from nanogpt.report import fail

SIMPLE_TYPES = (bool, int, float, str, type(None))


def _type_name(default):
    return 'True/False' if isinstance(default, bool) else type(default).__name__


def _coerce(name, value, default, nullable, raw=None):
    """value with the type of default, or a one-line error; raw is the text from the command line."""
    if value is None and (default is None or name in nullable):
        return None
    if default is None:
        return value if raw is None else raw
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return value.lower() == 'true'
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif default == 'auto' and isinstance(value, (bool, int, float)):
        return value
    elif isinstance(value, str):
        return value
    elif raw is not None:  # --out_dir=123 means the string '123'
        return raw
    shown = raw if raw is not None else repr(value)
    fail(f"{name} takes {_type_name(default)} (default {default!r}), not {shown}")


def _did_you_mean(name, settings, flag=''):
    close = difflib.get_close_matches(name, settings, n=1, cutoff=0.6)
    return f" (did you mean {flag}{close[0]}?)" if close else ''


def _unknown(name, settings, flag=''):
    fail(f"unknown setting {flag}{name}{_did_you_mean(name, settings, flag)}; {_script()} --help lists them all")


def _script():
    return f"python {os.path.relpath(sys.argv[0])}"


def _comments(path):
    """The comment at the end of each `name = value  # comment` line of a script, for --help."""
    comments = {}
    try:
        with open(path, encoding='utf-8') as f:
            tokens = list(tokenize.generate_tokens(io.StringIO(f.read()).readline))
    except (OSError, tokenize.TokenError, SyntaxError):
        return comments
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and tok.start[1] == 0 and i + 1 < len(tokens) and tokens[i + 1].string == '=':
            for later in tokens[i + 2:]:
                if later.start[0] != tok.start[0]:
                    break
                if later.type == tokenize.COMMENT:
                    comments[tok.string] = later.string.lstrip('#').strip()
    return comments


def _print_help(namespace, settings):
    comments = _comments(namespace.get('__file__', ''))
    doc = (namespace.get('__doc__') or '').strip()
    print(f"usage: {_script()} [config/file.py ...] [--key=value ...]\n")
    if doc:
        print(doc + '\n')
    print("settings (later arguments win; values are Python literals, anything else is a string):")
    lines = [(f"  --{name}={namespace[name]!r}", comments.get(name, '')) for name in settings]
    width = min(max(len(left) for left, _ in lines), 36)
    for left, comment in lines:
        print(f"{left:<{width}}  # {comment}" if comment else left)


def _find_config(path, namespace):
    """A config file as given, or relative to the script's folder (so config/x.py works anywhere)."""
    if os.path.isfile(path):
        return path
    beside_script = os.path.join(os.path.dirname(os.path.abspath(namespace.get('__file__', ''))), path)
    if os.path.isfile(beside_script):
        return beside_script
    fail(f"config file {path} not found (config files: config/*.py; settings: --key=value)")


def _run_config(path, namespace, defaults, nullable, lenient):
    """Run a config file with the settings (as set so far) in scope; return {setting: new value} for
    what it assigns, each of its default's type (lenient: skipping names that are not settings)."""
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
        tree = ast.parse(source, filename=path)
    except (OSError, UnicodeDecodeError, SyntaxError) as e:
        fail(f"config file {path} cannot be read: {e}")
    assigned = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        assigned += [t.id for t in targets if isinstance(t, ast.Name)]
    settings = list(defaults)
    scope = {name: namespace[name] for name in settings}
    try:
        exec(compile(tree, path, 'exec'), scope)
    except Exception as e:
        fail(f"config file {path} failed: {type(e).__name__}: {e}")
    updates = {}
    for name in assigned:
        if name.startswith('_'):  # private helpers in a config file are its own business
            continue
        if name not in settings and lenient:
            continue
        if name not in settings:
            fail(f"{path} sets unknown setting {name}{_did_you_mean(name, settings)}")
        updates[name] = _coerce(name, scope[name], defaults[name], nullable)
    return updates


def configure(namespace, argv=None, nullable=(), echo=True, lenient_files=False):
    """Apply config files and --key=value arguments to a script's settings, in order.

    namespace is the script's globals(): every public int/float/bool/str/None in it is a
    setting. nullable names settings that may also be None (e.g. top_k=None: no top-k).
    What was overridden is printed once every argument is accepted: to sys.stdout as it is then
    (echo=True), to a file given as echo, or nowhere (None).
    lenient_files lets config files set names this script does not have (bench.py reads the
    training configs for their model and batch), which are then ignored.
    Returns (config, explicit): all settings after overrides, and the names that a config
    file or argument set (as opposed to defaults).
    """
    argv = sys.argv[1:] if argv is None else argv
    settings = [k for k, v in namespace.items() if not k.startswith('_') and isinstance(v, SIMPLE_TYPES)]
    defaults = {k: namespace[k] for k in settings}  # each override is checked against these, not the last one
    wants_help = any(arg in ('-h', '--help') for arg in argv)
    explicit, report = [], []
    for arg in argv:
        if arg in ('-h', '--help'):
            continue
        if arg.startswith('--'):
            key, sep, raw = arg[2:].partition('=')
            if not sep:
                fail(f"{arg} needs a value: write --{key}=VALUE")
            if key not in settings:
                _unknown(key, settings, '--')
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = raw
            updates = {key: _coerce(key, value, defaults[key], nullable, raw)}
            source = 'command line'
        elif '=' in arg and not os.path.exists(arg):
            fail(f"{arg} is not a config file; settings are written --{arg}")
        else:
            arg = _find_config(arg, namespace)
            updates = _run_config(arg, namespace, defaults, nullable, lenient_files)
            source = arg
        if report and report[-1][0] == source == 'command line':
            report[-1][1].update(updates)
        elif updates:
            report.append((source, dict(updates)))
        namespace.update(updates)
        explicit += updates
    if wants_help:  # after the other arguments, so that it shows the values they set
        _print_help(namespace, settings)
        sys.exit(0)
    if report and echo and int(os.environ.get('RANK', 0)) == 0:  # under DDP, rank 0 speaks for all
        for source, updates in report:
            print(f"{source}: " + ', '.join(f"{k}={v!r}" for k, v in updates.items()),
                  file=sys.stdout if echo is True else echo, flush=True)
    return {k: namespace[k] for k in settings}, set(explicit)
