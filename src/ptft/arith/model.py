"""The one-layer Transformer of the grokking literature (Nanda et al. 2023), with named stages.

Stages in forward order (the init knobs address them by these names, see ptft.pipeline.knobs):
``embed`` (token embedding W_E), ``pos`` (learned positions W_pos), ``attn`` (W_Q, W_K, W_V, W_O, no biases),
``mlp`` (W_in + b_in, ReLU, W_out + b_out) and ``unembed`` (W_U, no bias). No LayerNorm.
Initialisation: every matrix ~ N(0, 1/d_model) except W_U ~ N(0, 1/d_vocab); biases 0.

Only what the answer needs is computed: the residual stream at the LAST position, whose attention
(causal) reads all three positions: ``logits = U(r + mlp(r))`` with ``r = x_2 + attn(x)_2``, ``x = E[tok] + pos``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ptft import ConfigError

N_CTX = 3


@dataclass
class TransformerConfig:
    """`model=transformer` (Hydra structured config)."""

    name: str = "transformer"
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512


def _normal(*shape: int, std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


class Positions(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.weight = _normal(n_ctx, d_model, std=1 / math.sqrt(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        s = 1 / math.sqrt(d_model)
        self.W_Q, self.W_K, self.W_V = (_normal(d_model, d_model, std=s) for _ in range(3))  # (heads*d_head, d_model)
        self.W_O = _normal(d_model, d_model, std=s)                                           # (d_model, heads*d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> the attention output at the last position (B, d)."""
        b, t, _ = x.shape
        q = (x[:, -1] @ self.W_Q.T).view(b, self.n_heads, self.d_head)                       # (B, H, dh)
        k = (x @ self.W_K.T).view(b, t, self.n_heads, self.d_head)                           # (B, T, H, dh)
        v = (x @ self.W_V.T).view(b, t, self.n_heads, self.d_head)
        att = torch.softmax(torch.einsum("bhd,bthd->bht", q, k) / math.sqrt(self.d_head), dim=-1)
        z = torch.einsum("bht,bthd->bhd", att, v).reshape(b, -1)
        return z @ self.W_O.T


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        s = 1 / math.sqrt(d_model)
        self.W_in, self.b_in = _normal(d_mlp, d_model, std=s), nn.Parameter(torch.zeros(d_mlp))
        self.W_out, self.b_out = _normal(d_model, d_mlp, std=s), nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_in.T + self.b_in) @ self.W_out.T + self.b_out


class Unembed(nn.Module):
    def __init__(self, d_model: int, n_out: int, d_vocab: int):
        super().__init__()
        self.d_vocab = d_vocab
        self.weight = _normal(n_out, d_model, std=1 / math.sqrt(d_vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class ArithTransformer(nn.Module):
    STAGES = ("embed", "pos", "attn", "mlp", "unembed")
    STAGE_MODULES: dict = {}
    HEAD = "unembed"
    DEFAULT_SPLIT = "mlp"  # embed, pos, attn get kappa
    DIAG_OUTPUTS: dict = {}

    def __init__(self, d_vocab: int, n_out: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512):
        super().__init__()
        self.embed = nn.Embedding(d_vocab, d_model)
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(d_model))
        self.pos = Positions(N_CTX, d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp = MLP(d_model, d_mlp)
        self.unembed = Unembed(d_model, n_out, d_vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.pos(self.embed(tokens))
        r = x[:, -1] + self.attn(x)
        return self.unembed(r + self.mlp(r))

    def reset_head(self, n_out: int) -> Unembed:
        old = self.unembed.weight
        head = Unembed(old.shape[1], n_out, self.unembed.d_vocab).to(device=old.device, dtype=old.dtype)
        self.unembed = head
        return head

    def head_outputs(self) -> int:
        return int(self.unembed.weight.shape[0])


def build_model(cfg: TransformerConfig, d_vocab: int, n_out: int) -> ArithTransformer:
    validate(cfg)
    return ArithTransformer(d_vocab, n_out, cfg.d_model, cfg.n_heads, cfg.d_mlp)


def validate(cfg: TransformerConfig) -> None:
    if cfg.name != "transformer":
        raise ConfigError(f"model.name={cfg.name!r}: choose the model with the group syntax model=transformer")
    for key in ("d_model", "n_heads", "d_mlp"):
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"model.{key}={v!r} must be an integer >= 1")
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(f"model.d_model={cfg.d_model} must be a multiple of model.n_heads={cfg.n_heads}")
    check_size(cfg)


def check_size(cfg: TransformerConfig, p: int = 113, n_train: int = 0) -> None:
    """The model (fp32 weights, gradients and two AdamW moments) and, given the data (modulus p, n_train
    full-batch examples), its training activations fit in memory (ptft.limits), before anything is built."""
    from ptft.limits import check_memory

    d, m, vocab = cfg.d_model, cfg.d_mlp, p + 16
    params = 4 * d * d + 2 * d * m + (vocab + N_CTX + p) * d + m + d
    acts = n_train * (N_CTX * (8 * d + 2 * m + 2 * cfg.n_heads * N_CTX) + 3 * p)  # forward values, kept for backward
    check_memory(f"model.d_model={d}, model.d_mlp={m}, model.n_heads={cfg.n_heads}" +
                 (f" on {n_train} training pairs of data.p={p}" if n_train else ""),
                 4.0 * (4 * params + 2 * acts), "lower model.d_model / model.d_mlp (or data.p)")
