"""LoRA finetuning (--lora_rank, nanogpt/lora.py): only the adapters train, the checkpoint's 'model' is
the plain GPT with them folded in, a resume goes on with the adapters; the settings that cannot work
are refused; and train.py under torchrun, DDP and FSDP, finetunes with adapters and activation
checkpointing and resumes exactly."""
import re
import sys

import pytest
import torch

from conftest import REPO, TINY_MODEL, load_script, read_metrics, run_torchrun, train_losses
from made_up import random_hf_gpt2
from model import GPT, GPTConfig
from nanogpt import lora, models, optimizers
from test_activation_checkpointing import same_tensors, tiny_gpt, train

ALL_LINEARS = ','.join(lora.LINEARS)
# GPT-2's vocabulary and biases, a tiny rest: the embeddings outweigh the blocks, as in GPT-2 itself
GPT2_SHAPED = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=50257, bias=True, dropout=0.0)


def eval_logits(model, tokens):
    """Logits at every position, dropout off."""
    model.eval()
    with torch.no_grad():
        return model(tokens, torch.zeros_like(tokens))[0]


def test_adapters_alone_train_and_fold_into_a_plain_gpt(capsys):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**GPT2_SHAPED))
    own_weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tokens = torch.randint(50257, (2, 32), generator=torch.Generator().manual_seed(3))
    plain_logits = eval_logits(model, tokens)
    lora.attach(model, 4, 16.0, 0.0, ALL_LINEARS, init_from='gpt2')

    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * len(lora.LINEARS) * 2 and all(n.endswith(('.lora_A', '.lora_B')) for n in trainable)
    total = sum(p.numel() for p in model.parameters())
    assert sum(trainable.values()) < 0.02 * total
    assert f"{sum(trainable.values()):,} trainable parameters" in capsys.readouterr().out
    assert torch.equal(eval_logits(model, tokens), plain_logits)  # B starts at zero: the model itself
    optimizer = optimizers.configure(model, 'adamw', 0.1, 3e-3, (0.9, 0.95), 'cpu')
    assert {id(p) for group in optimizer.param_groups for p in group['params']} == \
        {id(p) for p in model.parameters() if p.requires_grad}

    model.train()
    train(model, 5)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in own_weights.items())  # frozen
    merged, adapters = lora.split(model, state)
    assert {k: adapters[k] for k in ('rank', 'alpha', 'targets')} == {'rank': 4, 'alpha': 16.0, 'targets': ALL_LINEARS}
    assert all(adapters['weights'][name].abs().sum() > 0 for name in trainable if name.endswith('lora_B'))
    # the merged weights: a plain GPT, strictly, that computes what the adapted model computes
    plain = GPT(GPTConfig(**GPT2_SHAPED))
    plain.load_state_dict(merged)
    assert merged.keys() == plain.state_dict().keys()
    adapted_logits = eval_logits(model, tokens)
    torch.testing.assert_close(eval_logits(plain, tokens), adapted_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(adapted_logits, plain_logits, atol=1e-3)  # what the adapters learned shows
    # resuming, the merged model gets back the frozen weights and the adapters as they were
    resumed = GPT(GPTConfig(**GPT2_SHAPED))
    resumed.load_state_dict(merged)
    lora.attach(resumed, 4, 16.0, 0.0, ALL_LINEARS, init_from='resume', checkpoint={'lora': adapters}, say=False)
    assert same_tensors(resumed.state_dict(), state)


def test_adapters_on_a_hugging_face_gpt2_folder(tmp_path):
    pytest.importorskip('transformers')
    random_hf_gpt2(tmp_path / 'hf', vocab_size=100, scale=1.0)
    model = models.pretrained_model(str(tmp_path / 'hf'))
    lora.attach(model, 2, 8.0, 0.0, 'attn.c_attn,mlp.c_fc', init_from=str(tmp_path / 'hf'), say=False)
    assert train(model, 3)
    merged, _ = lora.split(model, model.state_dict())
    plain = GPT(model.config)
    plain.load_state_dict(merged)
    tokens = torch.randint(100, (2, 64), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(eval_logits(plain, tokens), eval_logits(model, tokens), rtol=0, atol=1e-5)


def test_lora_settings_that_cannot_work_are_refused(refused):
    with refused('--lora_rank must be 0 (no LoRA) or more, not -1'):
        lora.attach(tiny_gpt(), -1, 16.0, 0.0, ALL_LINEARS, init_from='out')
    for targets in ('attn.q_proj', ''):
        with refused(f"--lora_targets names {targets!r}, not a linear of the model's blocks", ALL_LINEARS):
            lora.attach(tiny_gpt(), 4, 16.0, 0.0, targets, init_from='out')
    with refused("init_from='scratch' has none", '--lora_rank=0'):
        lora.attach(tiny_gpt(), 4, 16.0, 0.0, ALL_LINEARS, init_from='scratch')
    # OpenAI's GPT-2 given chat tokens for a chat finetune: their new rows would stay frozen at the start
    gpt2_for_chat = tiny_gpt(vocab_size=50257)
    models.pad_vocab(gpt2_for_chat)
    with refused('the chat tokens this model lacked (ids 50257-50303) would never be learned',
                 'without LoRA first, then LoRA from that run'):
        lora.attach(gpt2_for_chat, 4, 16.0, 0.0, ALL_LINEARS, init_from='gpt2')


def test_a_resume_takes_the_lora_settings_of_its_checkpoint(refused):
    adapted = tiny_gpt()
    lora.attach(adapted, 4, 16.0, 0.0, ALL_LINEARS, init_from='out', say=False)
    lora_checkpoint = {'lora': lora.split(adapted, adapted.state_dict())[1]}
    with refused('the checkpoint was trained with lora_rank=4, lora_alpha=16', 'not without LoRA',
                 f'resume with --lora_rank=4 --lora_alpha=16.0 --lora_targets={ALL_LINEARS}'):
        lora.attach(tiny_gpt(), 0, 16.0, 0.0, ALL_LINEARS, init_from='resume', checkpoint=lora_checkpoint)
    with refused('with lora_rank=4', 'not with lora_rank=8'):
        lora.attach(tiny_gpt(), 8, 16.0, 0.0, ALL_LINEARS, init_from='resume', checkpoint=lora_checkpoint)
    # a plain checkpoint: train.py's own ('lora': None) or the original nanoGPT's (no 'lora' at all)
    for plain_checkpoint in ({'lora': None}, {}):
        with refused('the checkpoint was trained without LoRA, not with lora_rank=4', 'resume with --lora_rank=0'):
            lora.attach(tiny_gpt(), 4, 16.0, 0.0, ALL_LINEARS, init_from='resume', checkpoint=plain_checkpoint)
    # the same settings, the targets named in another order: resumed
    resumed = tiny_gpt()
    lora.attach(resumed, 4, 16, 0.0, ','.join(reversed(lora.LINEARS)), init_from='resume', checkpoint=lora_checkpoint,
                say=False)
    assert same_tensors(resumed.state_dict(), adapted.state_dict())


# the `trained` run finetuned: dropout in the blocks and the adapters, whose random state a resume must
# restore on each rank, and 2 micro-steps per rank
FINETUNE = ['--dataset=tiny', *TINY_MODEL, '--init_from=out', '--lora_rank=4', '--lora_dropout=0.1', '--dropout=0.1',
            '--activation_checkpointing=True', '--gradient_accumulation_steps=4', '--learning_rate=1e-2',
            '--eval_interval=4', '--log_interval=1', '--always_save_checkpoint=True']


def finetune(tmp_path, *args):
    result = run_torchrun(REPO / 'train.py', *FINETUNE, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow(40)
def test_finetuning_under_ddp_and_fsdp_with_activation_checkpointing(tmp_path, trained, monkeypatch, capsys):
    ddp = finetune(tmp_path, '--out_dir=ddp', '--max_iters=8')
    assert 'weights identical on all 2 ranks' in ddp.stdout and '2 processes (DDP, gloo)' in ddp.stdout
    assert 'LoRA rank 4, alpha 16 on ' + ALL_LINEARS in ddp.stdout
    losses = train_losses(tmp_path / 'ddp')
    evals = [e['val_loss'] for e in read_metrics(tmp_path / 'ddp') if e['event'] == 'eval']
    assert evals[-1] < evals[0]  # the adapters learn (each evaluation reads the same batches)
    # FSDP, stopped at 4 and resumed: the adapters go on from where they were. With two ranks and no
    # clipping, DDP's all-reduce and FSDP's reduce-scatter add the same two numbers: the same run to the bit
    fsdp = finetune(tmp_path, '--fsdp=True', '--out_dir=fsdp', '--max_iters=4')
    assert '2 processes (FSDP, gloo)' in fsdp.stdout
    finetune(tmp_path, '--fsdp=True', '--out_dir=fsdp', '--max_iters=8', '--init_from=resume')
    assert train_losses(tmp_path / 'fsdp') == losses
    whole, split = load(tmp_path / 'ddp' / 'ckpt.pt'), load(tmp_path / 'fsdp' / 'ckpt.pt')
    assert split['iter_num'] == 8
    assert same_tensors(whole['model'], split['model'])
    assert same_tensors(whole['lora']['weights'], split['lora']['weights'])

    # 'model' is a plain GPT's state dict, the trained run's own weights where no adapter is; the frozen
    # weights are kept unmerged beside the adapters; AdamW holds state for the adapters alone
    assert whole['model'].keys() == GPT(GPTConfig(**whole['model_args'])).state_dict().keys()
    base = load(tmp_path / 'out' / 'ckpt.pt')['model']
    adapted = {name for name in whole['lora']['weights'] if name.endswith('.weight')}
    assert all(torch.equal(whole['model'][name], base[name]) for name in base if name not in adapted)
    assert all(torch.equal(whole['lora']['weights'][name], base[name]) for name in adapted)
    assert len(split['optimizer']['state']) == 2 * len(lora.LINEARS) * 2
    assert all(state['step'] == 8 for state in split['optimizer']['state'].values())  # went on from 4
    # and sample.py samples from it as from any run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['sample.py', '--out_dir=fsdp', '--device=cpu', '--num_samples=1',
                                      '--max_new_tokens=20', '--start=ROMEO:'])
    load_script('sample.py')
    assert capsys.readouterr().out.startswith('ROMEO:')
    # eval.py too: the loss of the merged model on all of val.bin
    monkeypatch.setattr(sys, 'argv', ['eval.py', '--out_dir=fsdp', '--dataset=tiny', '--device=cpu', '--results_file='])
    load_script('eval.py')
    assert re.search(r'^val:tiny +loss +\d\.\d{4} ', capsys.readouterr().out, re.MULTILINE)
    # and export_hf.py's work: the merged model as a Hugging Face GPT-2, which computes what it computes
    models.export_hf('fsdp/ckpt.pt', 'hf')
    plain = GPT(GPTConfig(**split['model_args']))
    plain.load_state_dict(split['model'])
    tokens = torch.randint(split['model_args']['vocab_size'], (2, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(eval_logits(GPT.from_pretrained('hf'), tokens), eval_logits(plain, tokens),
                               rtol=0, atol=1e-5)
