"""The README and docs/: every command names a script, config files and settings that exist, and
every link to a file of the repo leads somewhere. (Running them is the other tests' work: they
run the same scripts on tiny data.)"""
import ast
import re
import shlex

import pytest

from conftest import REPO

PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md')), REPO / 'benchmarks' / 'README.md']


def commands(page):
    """(line, argv) of each python/torchrun command in the page's sh code blocks."""
    found, in_sh = [], False
    for line in page.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            in_sh = line.strip() in ('```sh', '```bash')
            continue
        if in_sh:
            for command in line.split('#')[0].split('&&'):
                words = shlex.split(command.replace('\\', ''))
                if words and words[0] in ('python', 'torchrun'):
                    found.append((line, words))
    return found


def settings_of(script):
    """The module-level settings a script declares before it calls configure (what --key=value sets)."""
    names = set()
    for node in ast.parse(script.read_text(encoding='utf-8')).body:
        if 'configure(' in ast.unparse(node):
            break
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.BinOp, ast.UnaryOp)):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_training_setting_is_in_the_settings_page():
    page = (REPO / 'docs' / 'settings.md').read_text(encoding='utf-8')
    missing = sorted(name for name in settings_of(REPO / 'train.py') if f'`{name}`' not in page)
    assert len(settings_of(REPO / 'train.py')) > 40 and not missing, f"docs/settings.md lacks {missing}"


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_commands_name_real_scripts_configs_and_settings(page):
    checked = 0
    for line, words in commands(page):
        files = [w for w in words[1:] if w.endswith('.py') and not w.startswith('-')]
        if not files or words[1] in ('-m', '-c'):
            continue
        for path in files:
            assert (REPO / path).exists(), f"{page.name}: {line}: no {path}"
        # the settings are those of the last script named (count_syncs.py train.py ...: train.py's)
        script = [path for path in files if not path.startswith('config/')][-1]
        known = settings_of(REPO / script) | {'help'}
        for arg in words[words.index(script) + 1:]:
            if arg.startswith('--'):
                key = arg[2:].partition('=')[0]
                assert key in known, f"{page.name}: {line}: {script} has no setting {key}"
        checked += 1
    assert checked or page.name != 'README.md'


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_links_to_files_of_the_repo_exist(page):
    for target in re.findall(r'\]\(([^)#\s]+)\)', page.read_text(encoding='utf-8')):
        if not target.startswith(('http://', 'https://')):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
