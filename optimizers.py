"""
The optimizers train.py can use: AdamW as in the original, or Muon for the matrices inside the
Transformer blocks with AdamW for everything else (the GPT-2 speedrun's split).

Muon (Jordan et al. 2024, torch.optim.Muon) orthogonalises each weight matrix's momentum before
the update, which only makes sense for whole 2-D matrices acting on hidden states; embeddings, the
output head, norms and biases stay with AdamW. Both follow train.py's one learning-rate schedule:
each parameter group carries lr_scale, its peak learning rate over learning_rate.
"""
import torch

from errors import fail

OPTIMIZERS = ('adamw', 'muon')


def muon_params(model):
    """The parameters Muon takes: the 2-D weights of the Transformer blocks."""
    return [p for name, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and '.h.' in f'.{name}']


def configure(model, name, weight_decay, learning_rate, betas, device_type, muon_learning_rate=0.02,
              muon_momentum=0.95, muon_weight_decay=0.0):
    """AdamW for the whole model (model.configure_optimizers, the original's), or MuonAdamW; a
    one-line error for a name it does not know."""
    if name not in OPTIMIZERS or (name == 'muon' and learning_rate <= 0):
        fail(f"--optimizer takes {' or '.join(OPTIMIZERS)} (not {name!r}); muon needs a learning_rate above 0 "
             f"for AdamW's share")
    if name == 'adamw':
        return model.configure_optimizers(weight_decay, learning_rate, betas, device_type)
    matrices = muon_params(model)
    taken = {id(p) for p in matrices}
    muon = torch.optim.Muon([{'params': matrices, 'lr_scale': muon_learning_rate / learning_rate}],
                            lr=muon_learning_rate, momentum=muon_momentum, weight_decay=muon_weight_decay)
    adamw = model.configure_optimizers(weight_decay, learning_rate, betas, device_type,
                                       params=[p for p in model.parameters() if id(p) not in taken])
    return MuonAdamW(muon, adamw)


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer, for the training loop, the GradScaler (which needs
    only param_groups and step) and checkpoints (one state dict holding both)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {'muon': self.muon.state_dict(), 'adamw': self.adamw.state_dict()}

    def load_state_dict(self, state):
        self.muon.load_state_dict(state['muon'])
        self.adamw.load_state_dict(state['adamw'])
