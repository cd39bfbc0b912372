"""The modern recipe (config/modern.py): each choice on its own, off by default, and a modern model
trains, resumes exactly, samples with the KV cache and is refused where it cannot be expressed."""
import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import model
from configurator import configure
from nanogpt import checkpoints, models, optimizers, report
from conftest import REPO, TINY_MODEL, TRAINED_RUN, script_env, run_torchrun
from model import GPT, MODERN_DEFAULTS, GPTConfig, KVCache

BEFORE_THE_MODERN_RECIPE = '4ae0f4d'  # the last commit without it
MODERN = [str(REPO / 'config' / 'modern.py')]


def test_with_every_new_setting_off_training_is_bit_identical_to_before(run, tmp_path, trained):
    old = tmp_path / 'old'
    old.mkdir()
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', BEFORE_THE_MODERN_RECIPE], capture_output=True)
    if archive.returncode:
        pytest.skip(f"the repo's history (commit {BEFORE_THE_MODERN_RECIPE}) is not in this checkout")
    subprocess.run(['tar', '-x', '-C', str(old)], input=archive.stdout, check=True)
    # the older version runs the command that trained the `trained` fixture with this one
    subprocess.run([sys.executable, str(old / 'train.py'), *TRAINED_RUN, '--out_dir=before'], cwd=tmp_path,
                   capture_output=True, timeout=120, env=script_env(), check=True)
    before, now = (torch.load(tmp_path / name / 'ckpt.pt', weights_only=True) for name in ('before', 'out'))
    assert before['iter_num'] == now['iter_num'] == 30 and before['model'].keys() == now['model'].keys()
    assert all(torch.equal(before['model'][k], now['model'][k]) for k in before['model'])
    assert before['model_args'] == now['model_args']  # what the original nanoGPT reads
    # and the older version's checkpoint resumes here
    resumed = run('train.py', *TRAINED_RUN, '--out_dir=before', '--init_from=resume', '--max_iters=32')
    assert 'resuming from before/ckpt.pt at iteration 30' in resumed.stdout and 'done: 32 iterations' in resumed.stdout


@pytest.mark.slow
def test_a_modern_model_trains_resumes_exactly_samples_and_benches(run, refused, tmp_path, char_data):
    args = ['--dataset=tiny', *MODERN, *TINY_MODEL, '--eval_interval=10', '--always_save_checkpoint=True',
            '--muon_ns_steps=4']
    out = run('train.py', *args, '--max_iters=20', '--out_dir=straight').stdout
    assert 'modern: rotary, norm=rmsnorm, qk_norm, mlp=relu2, untied head, zero init; optimizer: muon' in out
    run('train.py', *args, '--max_iters=10', '--out_dir=split')
    result = run('train.py', *args, '--max_iters=20', '--out_dir=split', '--init_from=resume')
    assert 'done: 20 iterations' in result.stdout
    straight, split = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True) for d in ('straight', 'split'))
    assert all(torch.equal(straight['model'][k], split['model'][k]) for k in straight['model'])
    assert straight['optimizer'].keys() == {'muon', 'adamw'}
    assert straight['optimizer']['muon']['param_groups'][0]['ns_steps'] == 4
    # the checkpoint names its modern choices, so the original nanoGPT's GPTConfig refuses it
    assert {k: straight['model_args'][k] for k in ('rotary', 'qk_norm', 'mlp', 'tie_weights')} == \
        dict(rotary=True, qk_norm=True, mlp='relu2', tie_weights=False)
    original_config = dataclasses.make_dataclass('GPTConfig', ['block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd',
                                                               'dropout', 'bias'])
    with pytest.raises(TypeError):
        original_config(**straight['model_args'])
    # sampling past the context window (16): with the KV cache and without, the same tokens
    text = run('sample.py', '--out_dir=straight', '--num_samples=2', '--max_new_tokens=40', '--start=the').stdout
    assert text.startswith('the') and text.count('\n---------------\n') == 2
    gpt, _, _ = models.inference_model('resume', str(tmp_path / 'straight'))
    prompt = torch.randint(gpt.config.vocab_size, (2, 3))

    def sampled(use_cache):  # as sample.py samples: its temperature, top_k and slide_to
        torch.manual_seed(0)
        return gpt.eval().generate(prompt, 40, temperature=0.8, top_k=200, use_cache=use_cache, slide_to=8)
    assert torch.equal(sampled(use_cache=True), sampled(use_cache=False))
    with refused('modern-recipe model', 'sample.py'):
        models.export_hf(str(tmp_path / 'straight' / 'ckpt.pt'), str(tmp_path / 'hf'))
    # bench.py times the modern step, with the FLOPs of the model it built
    run('bench.py', *MODERN, *TINY_MODEL[:5], '--vocab_size=65', '--bench_iters=2', '--warmup_iters=1',
        '--results_file=bench.jsonl')
    record = json.loads((tmp_path / 'bench.jsonl').read_text())
    assert record['optimizer'] == 'muon' and record['model']['rotary'] and record['mfu'] > 0


def test_muon_under_ddp_keeps_every_rank_identical(tmp_path, char_data):
    result = run_torchrun(REPO / 'train.py', '--dataset=tiny', '--out_dir=out', *TINY_MODEL, '--max_iters=10',
                          '--eval_interval=10', '--optimizer=muon', '--gradient_accumulation_steps=2', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'weights identical on all 2 ranks' in result.stdout


def test_resuming_with_another_optimizer_is_a_one_line_error(refused, trained):
    # what train.py --init_from=resume --optimizer=muon does with a checkpoint trained with AdamW
    checkpoint = checkpoints.load_checkpoint(str(trained / 'ckpt.pt'))
    gpt = models.model_from_checkpoint(checkpoint, str(trained / 'ckpt.pt'))
    muon = optimizers.configure(gpt, 'muon', 0.1, 1e-3, (0.9, 0.95), 'cpu')
    with refused('resume with --optimizer=adamw'):
        checkpoints.load_training_state(checkpoint, gpt, muon, torch.amp.GradScaler('cpu', enabled=False), 'muon')
    with pytest.raises(ValueError, match='norm takes layernorm'):  # train.py says it in one line (test_bad_input.py)
        GPT(GPTConfig(norm='batchnorm'))
    with refused('adamw or muon'):
        optimizers.configure(gpt, 'sgd', 0.1, 1e-3, (0.9, 0.95), 'cpu')
    with refused('muon_ns_steps takes a whole number'):
        optimizers.configure(gpt, 'muon', 0.1, 1e-3, (0.9, 0.95), 'cpu', muon_ns_steps=0)


@pytest.mark.parametrize('choice', [dict(rotary=True), dict(norm='rmsnorm'), dict(norm='rmsnorm_free'),
                                    dict(qk_norm=True), dict(mlp='relu2'), dict(logit_softcap=10.0),
                                    dict(tie_weights=False, zero_init=True), dict(MODERN_DEFAULTS)])
def test_each_choice_caches_keys_and_values_exactly(choice):
    # a whole sequence at once, and a prompt then one token at a time through the cache: the same logits
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=65, **choice)).eval()
    for p in model.parameters():  # zero_init's zeros would make every comparison trivially equal
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(65, (2, 12))
    whole, _ = model(x, x)
    caches = [KVCache() for _ in model.transformer.h]
    stepwise = [model(x[:, :5], kv_caches=caches)[0]] + [model(x[:, [i]], kv_caches=caches)[0] for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(stepwise, 1), whole[:, 4:], rtol=1e-5, atol=1e-5)
    assert GPTConfig(**choice).is_classic() == (choice == MODERN_DEFAULTS)


def test_what_each_choice_changes_in_the_model():
    base = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=65)
    classic, modern = GPT(GPTConfig(**base)), GPT(GPTConfig(**base, rotary=True, norm='rmsnorm_free',
                                                               tie_weights=False, zero_init=True))
    assert 'transformer.wpe.weight' in classic.state_dict() and 'transformer.wpe.weight' not in modern.state_dict()
    assert not any(name.startswith('transformer.ln_f') for name in modern.state_dict())  # parameter-free norms
    assert modern.lm_head.weight is not modern.transformer.wte.weight and not modern.lm_head.weight.any()
    assert not any(p.any() for name, p in modern.named_parameters() if name.endswith('c_proj.weight'))
    # FLOPs count the untied head's matmul but not the embedding lookups
    blocks = sum(p.numel() for p in modern.transformer.h.parameters())
    assert modern.get_num_params() == blocks + modern.lm_head.weight.numel()
    # Muon takes exactly the blocks' matrices; AdamW the embeddings, the head, norms and biases
    taken = {id(p) for p in optimizers.muon_params(modern)}
    assert taken == {id(p) for name, p in modern.named_parameters() if '.h.' in name and p.dim() == 2}
    assert id(modern.lm_head.weight) not in taken and id(modern.transformer.wte.weight) not in taken


def test_rotary_turns_pairs_so_that_attention_sees_relative_positions():
    # a rotation keeps a vector's length, and a query at position m meets a key at position n by m - n alone
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)
    cos, sin = model.rotary_tables(8, torch.arange(12), base=10000)
    at = lambda x, position: model.rotate_pairs(x, cos[position], sin[position])
    assert torch.allclose(at(q, 5).norm(), q.norm())
    assert torch.allclose(at(q, 7) @ at(k, 3), at(q, 9) @ at(k, 5), atol=1e-5)
    assert not torch.allclose(at(q, 7) @ at(k, 3), at(q, 9) @ at(k, 3), atol=1e-3)
    assert model.rotate_pairs(q.bfloat16(), cos[0], sin[0]).dtype == torch.bfloat16  # computed in float32
    assert torch.equal(model.ReLUSquared()(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor([0.0, 0.0, 9.0]))


def test_batched_muon_steps_as_torch_muon_does_and_resumes_from_its_state():
    # wide, tall and square matrices; tall ones are orthogonalised transposed, with a larger step
    shapes = [(8, 24), (24, 8), (8, 8), (8, 24), (24, 8)]
    ours = [torch.nn.Parameter(torch.randn(shape) * 0.1) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    settings = dict(lr=0.02, momentum=0.9, weight_decay=0.1, ns_steps=4)
    batched, reference = optimizers.BatchedMuon(ours, **settings), torch.optim.Muon(theirs, **settings)
    for step in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        if step == 2:  # a new one carries on from torch's state (checkpoints written with torch.optim.Muon)
            batched = optimizers.BatchedMuon(ours, **settings)
            batched.load_state_dict(copy.deepcopy(reference.state_dict()))
        batched.step()
        reference.step()
        for p, q in zip(ours, theirs):  # the same but for a rare last-bit difference of bfloat16 products
            torch.testing.assert_close(p, q, rtol=0, atol=3e-4)
    assert all((p - p0).abs().max() > 1e-2 for p, p0 in zip(ours, start))


def test_batched_muon_takes_a_grad_scalers_scale_and_skips_an_overflow_on_the_device():
    # in float16 the GradScaler hands the step its scale and found_inf as tensors: nothing is read on
    # the host; a finite step is the unscaled one, an overflowing one leaves weights and momenta alone
    settings = dict(lr=0.02, momentum=0.9, weight_decay=0.1, ns_steps=4)
    scaled, plain = ([torch.nn.Parameter(torch.randn(8, 24) * 0.1)] for _ in range(2))
    plain[0].data.copy_(scaled[0].data)
    scaled_opt, plain_opt = optimizers.BatchedMuon(scaled, **settings), optimizers.BatchedMuon(plain, **settings)
    scale = torch.tensor(1024.0)
    for found_inf in (0.0, 1.0, 0.0):
        grad = torch.randn(8, 24)
        scaled[0].grad, plain[0].grad = grad * scale, grad.clone()
        weights = scaled[0].detach().clone()
        momentum = scaled_opt.state[scaled[0]].get('momentum_buffer', torch.zeros(8, 24)).clone()
        scaled_opt.step(grad_scale=scale, found_inf=torch.tensor(found_inf))
        if found_inf:  # skipped, as the reference is
            assert torch.equal(scaled[0], weights)
            assert torch.equal(scaled_opt.state[scaled[0]]['momentum_buffer'], momentum)
        else:
            plain_opt.step()
            torch.testing.assert_close(scaled[0], plain[0], rtol=0, atol=1e-6)


def test_muon_and_adamw_under_a_grad_scaler_never_read_found_inf_on_the_host(monkeypatch):
    gpt = model.GPT(model.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    optimizer = optimizers.configure(gpt, 'muon', 0.1, 1e-3, (0.9, 0.95), 'cpu', 0.02, 0.95, 0.0, 5)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10)
    reads = []
    monkeypatch.setattr(torch.Tensor, 'item', lambda t: reads.append(t) or 0.0)
    x = torch.randint(0, 32, (2, 8))
    matrix, embedding = gpt.transformer.h[0].mlp.c_fc.weight, gpt.transformer.wte.weight  # Muon's, AdamW's
    before = matrix.detach().clone(), embedding.detach().clone()
    scaler.scale(gpt(x, x)[1]).backward()
    scaler.step(optimizer)
    assert reads == []
    assert not torch.equal(matrix, before[0]) and not torch.equal(embedding, before[1])  # both stepped


def test_modern_config_is_a_switch_over_any_recipe():
    # train.py's settings that the two config files touch, as train.py reads its command line
    settings = dict(MODERN_DEFAULTS, optimizer='adamw', n_layer=12, learning_rate=6e-4, __file__=str(REPO / 'train.py'))
    configure(settings, [str(REPO / 'config' / 'train_shakespeare_char_cpu.py'), *MODERN], echo=None,
              lenient_files=True)
    assert settings['n_layer'] == 4 and settings['learning_rate'] == 1e-3  # the recipe's
    gpt_config = GPTConfig(**{k: settings[k] for k in MODERN_DEFAULTS})
    assert report.describe_choices(gpt_config) == 'rotary, norm=rmsnorm, qk_norm, mlp=relu2, untied head, zero init'
    assert settings['optimizer'] == 'muon'
