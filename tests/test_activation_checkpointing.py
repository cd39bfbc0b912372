"""Activation checkpointing (--activation_checkpointing, nanogpt.memory.recompute_activations): a block
keeps only its input for the backward pass and runs its forward again there. The weights come out the
same to the bit, eager and compiled, with dropout; autograd keeps a small fraction of what it kept;
bfloat16 autocast gives the same gradients. Under DDP and FSDP through train.py: tests/test_lora.py."""
import functools

import pytest
import torch
import torch.utils.checkpoint

from configurator import configure
from model import GPT, GPTConfig
from nanogpt import lora, memory, runtime
from test_configurator import script_settings
from test_memory import saved_bytes

# tests/conftest.py's TINY_MODEL, with dropout: the recompute must draw the masks the forward drew
TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=65, dropout=0.1, bias=False)


def tiny_gpt(**shape):
    """A GPT of TINY_SHAPE (with changes), its weights the same for the same shape."""
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY_SHAPE, **shape}))


def train(model, steps, forward=None):
    """steps of AdamW (as train.py configures it) on made-up batches, dropout drawn from one seed; the
    losses. forward: the model as the loop calls it (compiled), if not model itself."""
    torch.manual_seed(1)
    optimizer = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), 'cpu')
    batches = torch.Generator().manual_seed(2)
    forward = model if forward is None else forward
    losses = []
    for _ in range(steps):
        tokens = torch.randint(model.config.vocab_size, (4, model.config.block_size + 1), generator=batches)
        _, loss = forward(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def fresh_dynamo():
    """Compiled code for GPT.forward and Block.forward left behind would count as other tests' recompiles."""
    yield
    torch._dynamo.reset()


def lora_gpt(recompute):
    """A tiny GPT with LoRA adapters (dropout in them too), the same every call."""
    model = tiny_gpt()
    lora.attach(model, 4, 16.0, 0.1, ','.join(lora.LINEARS), init_from='out', say=False)
    if recompute:
        memory.recompute_activations(model)
    return model


def test_recomputed_activations_train_the_same_weights_to_the_bit():
    kept, recomputed = tiny_gpt(), tiny_gpt()
    memory.recompute_activations(recomputed)
    assert train(kept, 50) == train(recomputed, 50)
    assert same_tensors(kept.state_dict(), recomputed.state_dict())
    # the test can tell: a recompute that draws new dropout masks trains other weights
    fresh_masks = tiny_gpt()
    for block in fresh_masks.transformer.h:
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False,
                                          preserve_rng_state=False)
    train(fresh_masks, 50)
    assert not same_tensors(kept.state_dict(), fresh_masks.state_dict())


@pytest.mark.slow(45)
def test_recomputed_activations_of_compiled_blocks_train_the_same_weights_to_the_bit(fresh_dynamo):
    # per block, as train.py compiles under torchrun: the checkpoint wraps the compiled block, whose
    # graph is the one compiled without it, and whose dropout (Inductor's own random numbers, drawn
    # from torch's random state) draws the same masks again when the recompute restores that state.
    # The blocks carry LoRA adapters (with dropout of their own): Inductor compiles those too
    compiled, recomputed = lora_gpt(recompute=False), lora_gpt(recompute=False)
    for model in (compiled, recomputed):
        runtime.compile_model(model, model, 'blocks', say=False)
    memory.recompute_activations(recomputed)
    losses = train(compiled, 50)
    assert train(recomputed, 50) == losses
    assert same_tensors(compiled.state_dict(), recomputed.state_dict())
    assert all(p.abs().sum() > 0 for name, p in compiled.named_parameters() if name.endswith('lora_B'))  # trained
    # Inductor's dropout masks, not eager's: the compiled code ran
    assert train(lora_gpt(recompute=False), 50) != losses


def test_recomputed_activations_traced_into_one_graph(monkeypatch, fresh_dynamo):
    # the whole model, as one process compiles it, here finetuning LoRA adapters: Dynamo traces the
    # checkpoints into the graph, and AOT autograd recomputes their insides in the backward pass.
    # aot_eager runs the graphs as traced, without Inductor's code generation (a minute of compiling):
    # the recompute must draw the forward's dropout masks again, and the weights are eager's to the bit
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='aot_eager'))
    eager, traced = lora_gpt(recompute=True), lora_gpt(recompute=True)
    forward = runtime.compile_model(traced, traced, 'model', say=False)
    graphs = runtime.compile_counts()['graphs']
    assert train(eager, 10) == train(traced, 10, forward)
    assert runtime.compile_counts()['graphs'] > graphs  # traced, not run eagerly past a limit of Dynamo's
    assert same_tensors(eager.state_dict(), traced.state_dict())
    assert all(p.abs().sum() > 0 for name, p in traced.named_parameters() if name.endswith('lora_B'))  # trained
    # the checkpoints are in the graph, not traced through: it keeps far less for the backward
    tokens = torch.randint(65, (4, 16), generator=torch.Generator().manual_seed(3))
    kept = lora_gpt(recompute=False)
    assert saved_bytes(forward, idx=tokens) < \
        0.75 * saved_bytes(runtime.compile_model(kept, kept, 'model', say=False), idx=tokens)


def test_recomputing_keeps_one_activation_per_block():
    # wide enough that activations, not the embeddings' or the loss's, make the difference
    batch, context, width = 4, 64, 64
    tokens = torch.randint(65, (batch, context), generator=torch.Generator().manual_seed(0))
    activation = batch * context * width * 4  # one (B, T, C) float32 tensor
    saved = {}
    for n_layer in (2, 4):
        for recompute in (False, True):
            model = tiny_gpt(n_layer=n_layer, n_embd=width, block_size=context, dropout=0.0)
            if recompute:
                memory.recompute_activations(model)
            saved[n_layer, recompute] = saved_bytes(model, idx=tokens)
    # two blocks more: without recomputing, the two blocks' every intermediate (over ten activations
    # each); with it, their inputs alone
    assert (saved[4, False] - saved[2, False]) / 2 > 10 * activation
    assert (saved[4, True] - saved[2, True]) / 2 == activation
    assert saved[4, True] < saved[4, False] / 5


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_gives_the_same_gradients(dtype):
    gradients = []
    for recompute in (False, True):
        model = tiny_gpt()
        if recompute:
            memory.recompute_activations(model)
        torch.manual_seed(1)  # the same dropout masks
        tokens = torch.randint(65, (4, 17), generator=torch.Generator().manual_seed(2))
        with torch.autocast('cpu', dtype=dtype):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    assert same_tensors(*gradients)
    assert gradients[0]['transformer.h.0.attn.c_attn.weight'].abs().sum() > 0


def test_activation_checkpointing_is_true_or_false(refused):
    namespace = script_settings('train.py')
    assert namespace['activation_checkpointing'] is False  # off unless asked for: today's runs unchanged
    with refused('activation_checkpointing takes True/False (default False), not maybe'):
        configure(namespace, ['--activation_checkpointing=maybe'])


def test_one_process_compiles_per_block_with_activation_checkpointing():
    # per block, the checkpoint wraps compiled code that a run without it also runs: the same weights
    assert runtime.resolve_compile_scope('auto', True, False, 1, activation_checkpointing=True) == 'blocks'
    assert runtime.resolve_compile_scope('auto', True, False, 1) == 'model'
    assert runtime.resolve_compile_scope('model', True, False, 1, activation_checkpointing=True) == 'model'
