"""sample.py on a tiny trained model, run as a user would."""
import torch

from conftest import assert_one_line_error


def samples(stdout):
    """The samples sample.py printed: each is followed by a line of dashes."""
    return stdout.split('\n---------------\n')[:-1]


def test_sample_decodes_with_the_training_vocabulary(run, trained):
    result = run('sample.py', '--out_dir=out', '--num_samples=3', '--max_new_tokens=50', '--start=the king')
    texts = samples(result.stdout)
    assert len(texts) == 3
    vocab = set(torch.load(trained / 'ckpt.pt', weights_only=True)['meta']['stoi'])
    for text in texts:
        assert text.startswith('the king') and len(text) == len('the king') + 50
        assert set(text) <= vocab


def test_sample_is_reproducible_with_a_seed(run, trained):
    args = ['--out_dir=out', '--num_samples=1', '--max_new_tokens=30']
    first = run('sample.py', *args, '--seed=7').stdout
    assert first == run('sample.py', *args, '--seed=7').stdout
    assert first != run('sample.py', *args, '--seed=8').stdout


def test_sample_prompt_from_file(run, trained, tmp_path):
    (tmp_path / 'prompt.txt').write_text('my lord\n')
    text = samples(run('sample.py', '--out_dir=out', '--num_samples=1', '--max_new_tokens=5',
                       '--start=FILE:prompt.txt').stdout)[0]
    assert text.startswith('my lord\n')


def test_sample_uses_meta_pkl_for_checkpoints_without_a_vocabulary(run, trained, tmp_path):
    # the original's checkpoints name their dataset; its meta.pkl holds the vocabulary
    checkpoint = torch.load(trained / 'ckpt.pt', weights_only=True)
    del checkpoint['meta']
    torch.save(checkpoint, trained / 'ckpt.pt')
    assert len(samples(run('sample.py', '--out_dir=out', '--num_samples=2', '--max_new_tokens=5').stdout)) == 2


def test_sample_bad_input(run, trained):
    assert_one_line_error(run('sample.py', '--out_dir=nowhere', expect=None), 'no checkpoint at nowhere/ckpt.pt')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--temperature=0', expect=None), 'temperature')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--top_k=0', expect=None), 'top_k')
    assert_one_line_error(run('sample.py', '--out_dir=out', '--start=FILE:missing.txt', expect=None), 'missing.txt')
