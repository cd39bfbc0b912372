"""
The whole GPT language model in one file: a decoder-only Transformer as in GPT-2. Module and
parameter names are the original nanoGPT's (transformer.wte, .wpe, .h.N.ln_1/attn/ln_2/mlp, .ln_f,
lm_head), so checkpoints move between the two projects, and OpenAI's GPT-2 weights load
(from_pretrained). Nothing about training lives here: no devices, dtypes, schedules or files.
"""
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    gelu_approximate: str = 'none'  # 'tanh' for OpenAI's GPT-2 weights, which were trained with it
    # the modern recipe (GPT-2 speedrun, modded-nanogpt, nanochat), each on its own; defaults: GPT-2's
    rotary: bool = False  # rotary position embeddings (RoFormer, Su et al. 2021) instead of learned ones
    norm: str = 'layernorm'  # 'rmsnorm' (Zhang & Sennrich 2019) with a gain, or 'rmsnorm_free' without one
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    mlp: str = 'gelu'  # 'relu2': ReLU squared (So et al. 2021, Primer)
    tie_weights: bool = True  # False: an output head of its own, not the token embedding
    zero_init: bool = False  # start every projection into the residual stream, and the head, at zero
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap) (Gemma 2), bounding them smoothly
    rotary_base: float = 10000.0

    def modern_choices(self):
        """The modern recipe's settings this model has that differ from GPT-2's, {name: value}."""
        return {name: getattr(self, name) for name, default in MODERN_DEFAULTS.items()
                if getattr(self, name) != default}

    def is_classic(self):
        """True when the model is GPT-2's, which the original nanoGPT and Hugging Face can express."""
        return not self.modern_choices()


MODERN_DEFAULTS = dict(rotary=False, norm='layernorm', qk_norm=False, mlp='gelu', tie_weights=True, zero_init=False,
                       logit_softcap=0.0)


# GPT-2 checkpoints (OpenAI's, Hugging Face's GPT2LMHeadModel) keep these as Conv1D: nn.Linear's transpose
HF_TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# OpenAI's GPT-2 sizes (124M, 350M, 774M, 1558M parameters): (n_layer, n_head, n_embd) of each
GPT2_SHAPES = {'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),
               'gpt2-xl': (48, 25, 1600)}
PRETRAINED = tuple(GPT2_SHAPES)


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (nn.LayerNorm could not, in older torch)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """x / rms(x), times a learned gain unless parameter-free."""

    def __init__(self, ndim, gain):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim)) if gain else None

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, 1e-6)


def make_norm(config):
    if config.norm == 'layernorm':
        return LayerNorm(config.n_embd, bias=config.bias)
    return RMSNorm(config.n_embd, gain=config.norm == 'rmsnorm')


def rotary_tables(head_size, positions, base):
    """cos and sin of each position's angle per frequency, (T, head_size // 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device) / head_size)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def rotate_pairs(x, cos, sin):
    """Turn each pair (first half, second half) of x's head dimensions by its position's angle,
    computed in float32 at least: under bfloat16 autocast the products would be rounded coarsely."""
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class KVCache:
    """Keys and values of the tokens one attention layer has seen, for generating a token at a time."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def append(self, k, v):
        """Store new keys/values (B, nh, T, hs); return all so far and no mask: the new ones come last."""
        new = k.size(2)
        if self.k is None or self.length + new > self.k.size(2):
            grow = max(self.length + new, 2 * (self.k.size(2) if self.k is not None else 64))
            k_all, v_all = k.new_empty(*k.shape[:2], grow, k.size(3)), v.new_empty(*v.shape[:2], grow, v.size(3))
            if self.length:
                k_all[:, :, :self.length], v_all[:, :, :self.length] = self.k[:, :, :self.length], self.v[:, :, :self.length]
            self.k, self.v = k_all, v_all
        self.k[:, :, self.length:self.length + new], self.v[:, :, self.length:self.length + new] = k, v
        self.length += new
        return self.k[:, :, :self.length], self.v[:, :, :self.length], None


class StaticKVCache:
    """A KV cache for compiled decoding: buffers of a fixed size (block_size) and the count filled
    as a tensor, not an int, so every one-token step has the same shapes and constants and compiles
    once. Attention then reads the whole buffer, masked to the positions filled so far."""

    def __init__(self, size, device):
        self.size = size
        self.k = self.v = None  # allocated by the first append, which knows the batch, heads and dtype
        self.filled = torch.zeros((), dtype=torch.long, device=device)

    def positions(self, n):
        """The positions the next n tokens will take, a tensor."""
        return self.filled + torch.arange(n, device=self.filled.device)

    def append(self, k, v):
        """Write new keys/values (B, nh, T, hs) at the next positions; return the whole buffers and
        which of their positions each new query may see, (T, size)."""
        if self.k is None:  # zeros, not empty: a NaN in an unfilled slot would poison the masked sums
            self.k = k.new_zeros(*k.shape[:2], self.size, k.size(3))
            self.v = v.new_zeros(*v.shape[:2], self.size, v.size(3))
        where = self.positions(k.size(2))
        self.k[:, :, where], self.v[:, :, where] = k, v
        self.filled.add_(k.size(2))  # in place: the tensor compiled code reads stays the same one
        return self.k, self.v, torch.arange(self.size, device=k.device) <= where[:, None]


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        # fused attention (flash kernels on GPUs that have them); the explicit math is the fallback
        self.flash = hasattr(F, 'scaled_dot_product_attention')

    def forward(self, x, kv_cache=None, rotary=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),), eps=1e-6), F.rms_norm(k, (k.size(-1),), eps=1e-6)
        if rotary is not None:  # keys are cached already rotated: each by its own position
            q, k = rotate_pairs(q, *rotary), rotate_pairs(k, *rotary)
        visible = None  # which keys each query may see, where a static cache says so
        if kv_cache is not None:
            k, v, visible = kv_cache.append(k, v)
        # otherwise new queries end the key sequence: one query sees every key, more need the causal mask (without
        # a cache causal even for one token: a plain bool, where T > 1 is symbolic under dynamic shapes)
        causal = visible is None and (kv_cache is None or T > 1)
        if causal and kv_cache is not None and k.size(2) != T:
            raise ValueError("a KV cache takes either a whole prompt at once or one token at a time")
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                               dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            if causal:
                visible = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if visible is not None:
                att = att.masked_fill(visible.logical_not(), float('-inf'))
            y = self.attn_dropout(F.softmax(att, dim=-1)) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(nn.Module):
    def forward(self, x):
        return F.relu(x).square()


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate) if config.mlp == 'gelu' else ReLUSquared()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: each sublayer reads a normalised copy and adds to the residual stream."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, rotary=None):
        x = x + self.attn(self.ln_1(x), kv_cache, rotary)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        for name in ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd'):
            if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(config, name)!r}")
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {config.dropout}")
        if config.norm not in ('layernorm', 'rmsnorm', 'rmsnorm_free') or config.mlp not in ('gelu', 'relu2'):
            raise ValueError(f"norm takes layernorm, rmsnorm or rmsnorm_free (not {config.norm!r}) and mlp "
                             f"gelu or relu2 (not {config.mlp!r})")
        if config.rotary and (config.n_embd // config.n_head) % 2:
            raise ValueError(f"rotary needs an even head size, not n_embd / n_head = {config.n_embd / config.n_head:g}")
        if config.logit_softcap < 0:
            raise ValueError(f"logit_softcap must be 0 (off) or positive, not {config.logit_softcap}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({} if config.rotary else {'wpe': nn.Embedding(config.block_size, config.n_embd)}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:  # the input embedding and the output projection share one matrix
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of projections into the residual stream by 1/sqrt(number of them);
        # zero_init starts them (and an untied head) at zero, so each block begins as the identity
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init:
            for name, p in self.named_parameters():
                if name.endswith('c_proj.weight') or (name == 'lm_head.weight' and not config.tie_weights):
                    nn.init.zeros_(p)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; by default without the embeddings that are only looked up: the position
        embeddings, and the token embeddings unless they double as the output layer."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() if 'wpe' in self.transformer else 0
            n -= 0 if self.config.tie_weights else self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_caches=None):
        """Logits (and the loss, given targets). Without targets only the last position's logits
        are computed, which is all generation needs. kv_caches (one per layer) continue a sequence."""
        x = self.hidden_states(idx, kv_caches)
        if targets is None:
            return self.logits(x[:, [-1], :]), None  # [-1] as a list keeps the time dimension
        logits = self.logits(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx, kv_caches=None):
        """The final layer's normalised outputs (B, T, n_embd), which lm_head turns into logits."""
        B, T = idx.size()
        if kv_caches and isinstance(kv_caches[0], StaticKVCache):  # its buffers bound the positions
            pos = kv_caches[0].positions(T)
        else:
            start = kv_caches[0].length if kv_caches else 0
            if start + T > self.config.block_size:
                raise ValueError(f"cannot forward {start + T} tokens, block_size is only {self.config.block_size}")
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x, rotary = self.transformer.wte(idx), None
        if self.config.rotary:  # positions enter as rotations of queries and keys, in every layer
            rotary = rotary_tables(self.config.n_embd // self.config.n_head, pos, self.config.rotary_base)
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_caches[i] if kv_caches else None, rotary)
        return self.transformer.ln_f(x)

    def logits(self, x):
        """lm_head's output for hidden states x, soft-capped where the model says so."""
        logits = self.lm_head(x)
        if self.config.logit_softcap:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        return logits

    def token_losses(self, idx, targets):
        """The loss of each target token (B, T) in float32, 0 where the target is -1. Logits only
        where a target counts: evaluations that score a few tokens (a HellaSwag ending, the new part
        of a sliding window) skip most of lm_head's work and the (B, T, vocab) logits in memory."""
        x = self.hidden_states(idx)
        counted = targets != -1
        losses = torch.zeros(targets.shape, dtype=torch.float32, device=idx.device)
        losses[counted] = F.cross_entropy(self.logits(x[counted]).float(), targets[counted], reduction='none')
        return losses

    def crop_block_size(self, block_size):
        """Shrink the context window, e.g. to finetune GPT-2 (1024) with shorter blocks."""
        if block_size > self.config.block_size:
            raise ValueError(f"block_size {block_size} is larger than the model's {self.config.block_size}")
        self.config.block_size = block_size
        if 'wpe' in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_dir, override_args=None):
        """OpenAI's GPT-2 (one of PRETRAINED) through transformers, or a folder holding a saved
        GPT2LMHeadModel. Only dropout may be overridden; the logits match the Hugging Face model's."""
        override_args = override_args or {}
        if set(override_args) - {'dropout'}:
            raise ValueError(f"only dropout can be overridden for a pretrained model, not {sorted(override_args)}")
        if name_or_dir not in PRETRAINED and not os.path.isdir(name_or_dir):
            raise ValueError(f"{name_or_dir!r} is neither one of {', '.join(PRETRAINED)} nor a folder")
        from transformers import GPT2LMHeadModel
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
        c = hf_model.config
        activations = {'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu': 'none'}
        if c.activation_function not in activations or c.n_inner not in (None, 4 * c.n_embd) \
                or c.layer_norm_epsilon != 1e-5 or c.scale_attn_by_inverse_layer_idx or not c.scale_attn_weights:
            raise ValueError(f"{name_or_dir} is a GPT-2 variant this model cannot express exactly "
                             f"(activation {c.activation_function}, n_inner {c.n_inner}, eps {c.layer_norm_epsilon})")
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd, bias=True, gelu_approximate=activations[c.activation_function],
                              dropout=override_args.get('dropout', 0.0)))
        ours = model.state_dict()
        theirs = {k: v for k, v in hf_model.state_dict().items() if not k.endswith(('.attn.bias', '.attn.masked_bias'))}
        if set(theirs) != set(ours):
            raise ValueError(f"{name_or_dir} does not have GPT-2's parameters: {sorted(set(theirs) ^ set(ours))[:4]}")
        with torch.no_grad():
            for k, v in theirs.items():
                ours[k].copy_(v.t() if k.endswith(HF_TRANSPOSED) else v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, params=None):
        """AdamW, decaying matrices and embeddings (2-D) only, never biases and norms; fused wherever
        this torch has the kernel (CPU included). params: the ones to optimise, if not all."""
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]
        groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        try:
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or torch
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    def flops_per_token(self):
        """Forward+backward FLOPs per token: 6 per parameter plus attention (PaLM paper, appendix B)."""
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak_flops (the caller's to know)."""
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, slide_to=None,
                 on_token=None, decode_step=None, stop_token=None):
        """Sample max_new_tokens tokens after idx (B, T), feeding each back in. Call model.eval() first.

        Once the sequence outgrows block_size, the window slides to keep the last slide_to tokens
        (default block_size, the original's rule: every step then sees the last block_size tokens).
        With use_cache each step feeds only the newest token and reuses every layer's keys and
        values; a slide shifts the positions, so the cache is rebuilt from the cropped context (at
        every step by default; once per block_size // 2 tokens with slide_to=block_size // 2). Both
        paths see the same contexts: the same seed gives the same tokens. on_token(token) sees each
        new (B, 1) token at once; generation ends once every row has sampled stop_token, if given.
        decode_step (torch.compile(model), say) runs the one-token steps over StaticKVCaches, whose
        fixed shapes compile once; prompts still go through the model. Its tokens match the default
        path's up to float rounding (attention sums over the whole buffer)."""
        if decode_step is not None and not use_cache:
            raise ValueError("decode_step runs the KV cache's one-token steps; it needs use_cache=True")
        block_size = self.config.block_size
        keep = min(slide_to or block_size, block_size)
        start = max(0, idx.size(1) - block_size)  # the context is idx[:, start:]
        caches, stopped = None, torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if idx.size(1) - start > block_size:
                start, caches = idx.size(1) - keep, None
            if use_cache and caches is not None:
                # the last step's token itself: idx[:, -1:], a view, has strides that change as idx grows
                logits, _ = (self if decode_step is None else decode_step)(next_token, kv_caches=caches)
            else:
                caches = [KVCache() if decode_step is None else StaticKVCache(block_size, idx.device)
                          for _ in self.transformer.h] if use_cache else None
                logits, _ = self(idx[:, start:], kv_caches=caches)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float('-inf'))
            next_token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_token), dim=1)
            if on_token is not None:
                on_token(next_token)
            if stop_token is not None:
                stopped |= next_token[:, 0] == stop_token
                if bool(stopped.all()):
                    break
        return idx
