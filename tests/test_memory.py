"""memory.estimate_peak against what autograd really keeps, on tiny models, and the start-up check
that stops a run whose estimate exceeds the GPU's free memory."""
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, load_script
from model import GPT, GPTConfig
from nanogpt import lora, memory, optimizers

B, T, V = 2, 16, 50  # batch, context and vocabulary of the tiny models


def tiny(n_layer=2, **choices):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=n_layer, n_head=4, n_embd=32, block_size=T, vocab_size=V, **choices))


def saved_bytes(model, dtype='float32', idx=None):
    """The bytes of the distinct storages autograd saves for the backward pass of one forward with a
    loss, weights not counted (autocast's low-precision copies of them are); idx: the token ids, made
    up if not given."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    idx = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0)) if idx is None else idx
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
            model(idx, idx.roll(1, dims=1))
    return sum(kept.values())


def expected_saved_bytes(model, dtype='float32', blocks=None):
    """What estimate_peak's parts say autograd saves: every block's activations (or blocks' of them),
    the rest outside the blocks, the log-softmax the logits part counts, autocast's weight copies."""
    blocks = model.config.n_layer if blocks is None else blocks
    return blocks * memory.block_saved_bytes(model, B, T, dtype, 'cpu') + \
        memory.outside_blocks_saved_bytes(model, B, T, dtype, 'cpu') + 4 * B * T * V + \
        memory.weight_copy_bytes(model, dtype, blocks)


# CPU attention: without dropout a flash kernel, with dropout the math path and its (T, T) tensors
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('choices', [
    {}, {'dropout': 0.1}, {'bias': False, 'norm': 'rmsnorm_free'},
    {'rotary': True, 'qk_norm': True, 'norm': 'rmsnorm', 'mlp': 'relu2'},
    {'dropout': 0.1, 'rotary': True, 'qk_norm': True}])
def test_the_estimate_counts_what_autograd_saves(choices, dtype):
    # byte for byte on torch 2.13's CPU kernels; another torch may save a tensor more or less,
    # which this 2% would still catch when it is a whole (batch, time, width) tensor per block
    model = tiny(**choices)
    assert saved_bytes(model, dtype) == pytest.approx(expected_saved_bytes(model, dtype), rel=0.02)


def test_checkpointing_keeps_only_the_blocks_inputs():
    model = tiny(n_layer=3, dropout=0.1)
    without = memory.estimate_peak(model, B, T, 'float32', 'cpu')
    memory.recompute_activations(model)
    inputs = 3 * B * T * 32 * 4  # each block's float32 input
    assert saved_bytes(model) == pytest.approx(expected_saved_bytes(model, blocks=0) + inputs, rel=0.02)
    checkpointed = memory.estimate_peak(model, B, T, 'float32', 'cpu', activation_checkpointing=True)
    # the estimate adds back the one block recomputed at a time in the backward pass
    block = memory.block_saved_bytes(model, B, T, 'float32', 'cpu')
    assert checkpointed['activations'] == without['activations'] - 2 * block + inputs
    assert {k: checkpointed[k] for k in ('weights', 'gradients', 'optimizer_state', 'logits')} == \
        {k: without[k] for k in ('weights', 'gradients', 'optimizer_state', 'logits')}


def test_fsdp_shards_weights_gradients_and_optimizer_state():
    model = tiny()
    alone = memory.estimate_peak(model, B, T, 'bfloat16', 'cuda')
    sharded = memory.estimate_peak(model, B, T, 'bfloat16', 'cuda', world_size=2, fsdp=True)
    root = sum(p.numel() for name, p in model.named_parameters() if not name.startswith('transformer.h.'))
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    # plus what FSDP gathers: the root's weights (bfloat16) and two blocks' (the next one prefetched),
    # and the float32 gradients of the root and the block being reduce-scattered
    assert sharded['weights'] == alone['weights'] // 2 + 2 * (root + 2 * block)
    assert sharded['gradients'] == alone['gradients'] // 2 + 4 * (root + block)
    assert sharded['optimizer_state'] == alone['optimizer_state'] // 2
    ddp = memory.estimate_peak(model, B, T, 'bfloat16', 'cuda', world_size=2)
    assert ddp['gradients'] == 2 * alone['gradients']  # DDP's buckets beside the gradients


@pytest.mark.parametrize('lora_dropout', [0.0, 0.1])
def test_lora_counts_only_the_adapters_as_trained(lora_dropout):
    model = tiny()
    lora.attach(model, 4, 8.0, lora_dropout, ','.join(lora.LINEARS), init_from='gpt2', say=False)
    adapters = sum(p.numel() for name, p in model.named_parameters() if 'lora_' in name)
    estimate = memory.estimate_peak(model, B, T, 'float32', 'cuda')
    assert estimate['gradients'] == 4 * adapters and estimate['optimizer_state'] == 8 * adapters
    assert estimate['weights'] == 4 * sum(p.numel() for p in model.parameters())
    # the first block keeps a little less than the others: its input needs no gradient (the embeddings
    # are frozen), so ln_1 keeps nothing, nor, with lora_dropout, c_attn's adapter its dropout mask
    assert saved_bytes(model) == pytest.approx(expected_saved_bytes(model), rel=0.05)
    assert saved_bytes(model) <= expected_saved_bytes(model)


def test_muon_keeps_one_buffer_for_the_blocks_matrices():
    model = tiny()
    matrices = sum(p.numel() for p in optimizers.muon_params(model))
    rest = sum(p.numel() for p in model.parameters()) - matrices
    assert memory.estimate_peak(model, B, T, 'float32', 'cuda', 'muon')['optimizer_state'] == 4 * matrices + 8 * rest


def test_a_model_on_the_meta_device_is_estimated_as_one_on_the_cpu():
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=T, vocab_size=V)
    with torch.device('meta'):
        on_meta = GPT(config)
    on_gpu = memory.estimate_peak(on_meta, B, T, 'bfloat16', 'cuda')
    assert on_gpu == memory.estimate_peak(GPT(config), B, T, 'bfloat16', 'cuda')
    assert on_gpu['torch'] == 0
    assert on_gpu['total'] == sum(v for k, v in on_gpu.items() if k not in ('total', 'optimizer'))
    on_cpu = memory.estimate_peak(GPT(config), B, T, 'float32', 'cpu')
    assert on_cpu['torch'] > 0  # this process's own resident memory: the CPU estimate predicts the peak RSS


ESTIMATE = dict(weights=2**28, gradients=2**28, optimizer_state=2**29, activations=3 * 2**30, logits=2**29, torch=0,
                total=5 * 2**30, optimizer='adamw')
GPU = SimpleNamespace(device='cuda:0', device_type='cuda', master=True, ddp=False, world_size=1)


def test_the_start_up_line():
    assert memory.describe_estimate(ESTIMATE) == "memory estimate per process: 5.00 GB at the peak (weights 0.25, " \
        "gradients 0.25, AdamW state 0.50, activations 3.00, logits 0.50 GB)"
    assert "Muon and AdamW state" in memory.describe_estimate({**ESTIMATE, 'optimizer': 'muon'})


def test_an_estimate_over_the_free_memory_stops_the_run(refused, capsys):
    memory.check_fits(ESTIMATE, GPU, free_bytes=6 * 2**30)  # fits: the estimate said, nothing more
    assert capsys.readouterr() == (memory.describe_estimate(ESTIMATE) + '\n', '')
    with refused('5.00 GB', '4.00 GB free on cuda:0', 'batch_size', 'gradient_accumulation_steps',
                 'activation_checkpointing=True', 'fsdp=True', 'lora_rank', 'check_memory=False'):
        memory.check_fits(ESTIMATE, GPU, free_bytes=4 * 2**30)


def test_check_memory_false_warns_and_goes_on(capsys):
    memory.check_fits(ESTIMATE, GPU, check_memory=False, free_bytes=4 * 2**30)
    out, err = capsys.readouterr()
    assert out == memory.describe_estimate(ESTIMATE) + '\n'
    assert len(err.splitlines()) == 1 and err.startswith('warning:') and '5.00 GB' in err


def test_nothing_is_checked_off_cuda(capsys):
    memory.check_fits(ESTIMATE, SimpleNamespace(device='cpu', device_type='cpu', master=True, ddp=False))
    assert capsys.readouterr() == (memory.describe_estimate(ESTIMATE) + '\n', '')  # said, not checked
    memory.check_fits(ESTIMATE, SimpleNamespace(device='cpu', device_type='cpu', master=False, ddp=True))
    assert capsys.readouterr() == ('', '')  # rank 0 alone says it


def test_memory_estimate_refuses_settings_that_give_no_table(refused, monkeypatch):
    # before any run starts: one iteration leaves no step to time, after a minute of runs
    monkeypatch.setattr(sys, 'argv', ['memory_estimate.py', '--max_iters=1'])
    monkeypatch.setattr(sys, 'path', [str(REPO / 'benchmarks'), *sys.path])  # as `python benchmarks/...` has it
    with refused('max_iters takes 2 or more', '(got 1, 1, 32, '):
        load_script('benchmarks/memory_estimate.py')
