"""
The optimizers train.py can use: AdamW as in the original, or Muon for the matrices inside the
Transformer blocks with AdamW for everything else (the GPT-2 speedrun's split).

Muon (Jordan et al. 2024, torch.optim.Muon) orthogonalises each weight matrix's momentum before
the update, which only makes sense for whole 2-D matrices acting on hidden states; embeddings, the
output head, norms and biases stay with AdamW. Both follow train.py's one learning-rate schedule:
each parameter group carries lr_scale, its peak learning rate over learning_rate.
"""
import math
from collections import defaultdict

import torch

from nanogpt.report import fail

OPTIMIZERS = ('adamw', 'muon')


def muon_params(model):
    """The parameters Muon takes: the 2-D weights of the Transformer blocks."""
    return [p for name, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and '.h.' in f'.{name}']


def configure(model, name, weight_decay, learning_rate, betas, device_type, muon_learning_rate=0.02,
              muon_momentum=0.95, muon_weight_decay=0.0, muon_ns_steps=5):
    """AdamW for the whole model (model.configure_optimizers, the original's), or MuonAdamW; a
    one-line error for a name it does not know."""
    if name not in OPTIMIZERS or (name == 'muon' and learning_rate <= 0):
        fail(f"--optimizer takes {' or '.join(OPTIMIZERS)} (not {name!r}); muon needs a learning_rate above 0 "
             f"for AdamW's share")
    if name == 'muon' and (not isinstance(muon_ns_steps, int) or muon_ns_steps < 1):
        fail(f"--muon_ns_steps takes a whole number of Newton-Schulz iterations, 1 or more (Muon's is 5), "
             f"not {muon_ns_steps!r}")
    if name == 'adamw':
        return model.configure_optimizers(weight_decay, learning_rate, betas, device_type)
    matrices = muon_params(model)
    taken = {id(p) for p in matrices}
    muon = BatchedMuon([{'params': matrices, 'lr_scale': muon_learning_rate / learning_rate}],
                       lr=muon_learning_rate, momentum=muon_momentum, weight_decay=muon_weight_decay,
                       ns_steps=muon_ns_steps)
    adamw = model.configure_optimizers(weight_decay, learning_rate, betas, device_type,
                                       params=[p for p in model.parameters() if id(p) not in taken])
    return MuonAdamW(muon, adamw)


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer, for the training loop, the GradScaler (which needs
    only param_groups and step) and checkpoints (one state dict holding both)."""

    # float16: the GradScaler hands step() its scale and found_inf as tensors (grad_scale, found_inf
    # attributes) rather than reading found_inf on the host before every step, a wait for the GPU
    _step_supports_amp_scaling = True

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        grad_scale, found_inf = getattr(self, 'grad_scale', None), getattr(self, 'found_inf', None)
        self.muon.step(grad_scale, found_inf)
        if found_inf is None:
            self.adamw.step()
        elif getattr(self.adamw, '_step_supports_amp_scaling', False):  # fused AdamW skips on the device
            self.adamw.grad_scale, self.adamw.found_inf = grad_scale, found_inf
            self.adamw.step()
            del self.adamw.grad_scale, self.adamw.found_inf
        else:  # no fused kernel here: unscale, and ask the host whether to step
            if grad_scale is not None:
                torch._foreach_div_([p.grad for g in self.adamw.param_groups for p in g['params']
                                     if p.grad is not None], grad_scale)
            if not found_inf.item():
                self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {'muon': self.muon.state_dict(), 'adamw': self.adamw.state_dict()}

    def load_state_dict(self, state):
        self.muon.load_state_dict(state['muon'])
        self.adamw.load_state_dict(state['adamw'])


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon (same settings, state and update, in bfloat16 as torch computes it), with the
    Newton-Schulz iteration run once per matrix shape on a batch of matrices rather than once per
    matrix: a model has only a few shapes (4 per block), and each call costs the same fixed overhead
    whatever the matrix's size (benchmarks/README.md: the laptop model's Muon step 1.6x faster)."""

    def __init__(self, params, **settings):
        if settings.get('adjust_lr_fn') not in (None, 'original'):
            raise ValueError("BatchedMuon scales the learning rate as torch's 'original' does, and only so")
        super().__init__(params, **settings)

    @torch.no_grad()
    def step(self, grad_scale=None, found_inf=None):
        """One update. From a GradScaler (MuonAdamW): the gradients are divided by grad_scale where
        it is given, and where found_inf (a tensor) is set the step changes nothing, decided on the
        device: parameters and momenta keep their values through torch.where."""
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if grad_scale is not None:
                grads = torch._foreach_div(grads, grad_scale)
            for p in params:
                if 'momentum_buffer' not in self.state[p]:
                    self.state[p]['momentum_buffer'] = torch.zeros_like(p)
            momenta = [self.state[p]['momentum_buffer'] for p in params]
            if found_inf is not None:  # the step's results are computed aside, kept only if finite
                skip = found_inf.to(torch.bool)
                grads = [torch.where(skip, 0.0, g) for g in grads]
                old_params, old_momenta = [p.clone() for p in params], [m.clone() for m in momenta]
            torch._foreach_lerp_(momenta, grads, 1 - group['momentum'])
            updates = torch._foreach_lerp(grads, momenta, group['momentum']) if group['nesterov'] else momenta
            # wide and tall matrices orthogonalise as wide ones (the Gram matrix is the small side)
            by_shape = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[tuple(sorted(p.shape))].append(i)
            torch._foreach_mul_(params, 1 - group['lr'] * group['weight_decay'])
            for indices in by_shape.values():
                wide = [updates[i].mT if params[i].size(0) > params[i].size(1) else updates[i] for i in indices]
                ortho = newton_schulz(torch.stack(wide).bfloat16(), group['ns_coefficients'], group['ns_steps'],
                                      group['eps'])
                for i, o in zip(indices, ortho.unbind(0)):
                    rows, cols = params[i].shape
                    params[i].add_(o.mT if rows > cols else o, alpha=-group['lr'] * max(1, rows / cols) ** 0.5)
            if found_inf is not None:
                for tensor, old in zip(params + momenta, old_params + old_momenta):
                    tensor.copy_(torch.where(skip, old, tensor))


def newton_schulz(X, coefficients, steps, eps):
    """Muon's quintic Newton-Schulz iteration on a batch of wide matrices (..., m, n), m <= n: each
    comes out near an orthogonal matrix (singular values near 1; see torch.optim.Muon)."""
    a, b, c = coefficients
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
    return X


def learning_rate_at(it, learning_rate, min_lr, warmup_iters, lr_decay_iters, decay_lr=True):
    """train.py's schedule: linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters,
    then min_lr (the original's); decay_lr=False keeps learning_rate throughout."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)
