"""configurator.py: config files and --key=value, later ones winning, strict about mistakes."""
import io
import itertools

import pytest

from conftest import REPO, assert_one_line_error
from configurator import configure


def script_settings(script):
    """A script's settings and their defaults, as its configure(globals()) call sees them: the script
    run up to that call, which is where its work begins."""
    path = REPO / script
    lines = path.read_text(encoding='utf-8').splitlines(keepends=True)
    head = ''.join(itertools.takewhile(lambda line: 'configure(globals()' not in line, lines))
    namespace = {'__file__': str(path)}
    exec(compile(head, str(path), 'exec'), namespace)
    return namespace


def settings():
    return dict(__file__=str(REPO / 'train.py'), max_iters=100, learning_rate=6e-4, compile='auto',
                decay_lr=True, out_dir='out', start='\n', top_k=200)


def configure_error(capsys, namespace, argv, **kwargs):
    with pytest.raises(SystemExit) as exit_info:
        configure(namespace, argv, **kwargs)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_values_are_literals_or_strings_and_later_ones_win(tmp_path):
    config_file = tmp_path / 'my_config.py'
    config_file.write_text("import time\nmax_iters = 50\nout_dir = 'from-file'\n_scratch = time.time()\n")
    ns, echo = settings(), io.StringIO()
    config, explicit = configure(ns, [str(config_file), '--max_iters=7', '--learning_rate=1e-3',
                                      '--out_dir=run-2', '--decay_lr=false', '--compile=False'], echo=echo)
    assert (ns['max_iters'], ns['learning_rate'], ns['out_dir'], ns['decay_lr'], ns['compile']) == \
        (7, 1e-3, 'run-2', False, False)
    assert config['max_iters'] == 7 and explicit == {'max_iters', 'out_dir', 'learning_rate', 'decay_lr', 'compile'}
    # what was overridden, and where: each source once, in order
    assert echo.getvalue().splitlines() == [
        f"{config_file}: max_iters=50, out_dir='from-file'",
        "command line: max_iters=7, learning_rate=0.001, out_dir='run-2', decay_lr=False, compile=False"]


def test_a_setting_given_twice_is_checked_against_its_default():
    # an 'auto' setting set to False (a config file, say) still takes 'auto' again after it
    ns = settings()
    configure(ns, ['--compile=False', '--compile=auto'])
    assert ns['compile'] == 'auto'


def test_int_for_float_and_spelled_bools_are_fine():
    ns = settings()
    configure(ns, ['--learning_rate=1', '--decay_lr=True'])
    assert ns['learning_rate'] == 1.0 and isinstance(ns['learning_rate'], float) and ns['decay_lr'] is True
    configure(ns, ['--decay_lr=true'])
    assert ns['decay_lr'] is True


def test_value_containing_equals_and_numeric_string():
    ns = settings()
    configure(ns, ['--start=a=b==c', '--out_dir=123'])
    assert ns['start'] == 'a=b==c' and ns['out_dir'] == '123'


def test_nullable_setting_takes_none():
    ns = settings()
    configure(ns, ['--top_k=None'], nullable={'top_k'})
    assert ns['top_k'] is None


def test_unknown_key_suggests_the_closest(capsys):
    err = configure_error(capsys, settings(), ['--max_iter=5'])
    assert 'unknown setting --max_iter' in err and 'did you mean --max_iters?' in err


def test_unknown_key_in_config_file(capsys, tmp_path):
    config_file = tmp_path / 'bad.py'
    config_file.write_text("lerning_rate = 1e-3\n")
    err = configure_error(capsys, settings(), [str(config_file)])
    assert 'lerning_rate' in err and 'did you mean learning_rate?' in err


@pytest.mark.parametrize('arg, fragment', [
    ('--max_iters=1e3', 'max_iters takes int'),
    ('--max_iters=abc', 'max_iters takes int'),
    ('--decay_lr=1', 'decay_lr takes True/False'),
    ('--learning_rate=fast', 'learning_rate takes float'),
    ('--top_k=None', 'top_k takes int'),
])
def test_wrong_type_fails(capsys, arg, fragment):
    assert fragment in configure_error(capsys, settings(), [arg])


def test_missing_config_file(capsys):
    assert 'config file config/nope.py not found' in configure_error(capsys, settings(), ['config/nope.py'])


def test_flag_without_value_and_key_without_dashes(capsys):
    assert '--max_iters=VALUE' in configure_error(capsys, settings(), ['--max_iters'])
    assert '--max_iters=5' in configure_error(capsys, settings(), ['max_iters=5'])


def test_errors_from_the_real_scripts_are_one_line(run, capsys):
    # as a user sees it: no traceback, exit status 2
    assert_one_line_error(run('train.py', '--max_iter=5', expect=None), 'did you mean --max_iters?')
    assert 'batch_size takes int' in configure_error(capsys, script_settings('train.py'), ['--batch_size=12.5'])
    assert 'not found' in configure_error(capsys, script_settings('sample.py'), ['config/missing.py'],
                                          nullable={'top_k'})


def test_help_lists_every_setting_with_its_default(run, capsys):
    train_help = run('train.py', '--help').stdout
    for line in ("--max_iters=600000", "--device='auto'", "--compile='auto'", "--learning_rate=0.0006",
                 "--always_save_checkpoint=True", "--init_from='scratch'"):
        assert line in train_help
    assert 'optimizer steps in total' in train_help  # the comment beside the setting explains it
    train_settings = configure(script_settings('train.py'), [], echo=None)[0]
    assert all(f"  --{name}=" in train_help for name in train_settings)
    with pytest.raises(SystemExit) as exit_info:
        configure(script_settings('sample.py'), ['--help'], nullable={'top_k'})
    sample_help = capsys.readouterr().out
    assert exit_info.value.code == 0 and sample_help.startswith('usage: ')
    for line in ("--start='\\n'", '--num_samples=10', '--temperature=0.8', '--top_k=200', "--out_dir='out'"):
        assert line in sample_help


def test_original_config_files_load():
    # every shipped config is valid: each file is checked as it applies, so one call checks them all
    config_files = sorted(f'config/{path.name}' for path in (REPO / 'config').glob('*.py'))
    assert len(config_files) >= 8
    assert configure(script_settings('train.py'), config_files, echo=None)[1]  # what they set
