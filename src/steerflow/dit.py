"""A small diffusion transformer (DiT, Peebles & Xie 2023) for the MeanFlow and FM bases
(`base.arch=dit`, `flow.arch=dit`): the drop-in alternative to `nets.ConditionalField`.

Tokens are the chunk's positions: x (B, H·A) -> (B, H, A) -> Dense(width) + a learnt position
embedding. The state and the times are the conditioning c = MLP([s, fourier(t_1), ...]) (B, width),
applied in every block by adaptive LayerNorm with zero-initialised gates (adaLN-Zero): per block
shift/scale/gate for self-attention and for the MLP. A final adaLN and a zero-initialised linear
read each token back to A values, flattened to (B, H·A), so the net starts as the zero map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from steerflow.nets import MLP, as_column, fourier_features

ARCHS = ("mlp", "dit")


@dataclass(frozen=True)
class DiTConfig:
    tokens: int = 5  # chunk positions H (the chunk's width must be a multiple of it)
    width: int = 128
    depth: int = 2
    heads: int = 4
    time_features: int = 64  # Fourier features per time scalar


def check(arch: str, dit: DiTConfig, out_dim: int) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "dit":
        if min(dit.tokens, dit.width, dit.depth, dit.heads, dit.time_features) < 1:
            raise ValueError(f"dit sizes must be positive: {dit}")
        if out_dim % dit.tokens:
            raise ValueError(f"dit.tokens={dit.tokens} does not divide the chunk width {out_dim}")
        if dit.width % dit.heads:
            raise ValueError(f"dit.width={dit.width} is not a multiple of dit.heads={dit.heads}")


def _modulate(h, shift, scale):
    return nn.LayerNorm(use_bias=False, use_scale=False)(h) * (1.0 + scale[:, None]) + shift[:, None]


class DiTField(nn.Module):
    """(obs (B, obs_dim), x (B, H·A), *times (B,) or scalars) -> (B, H·A)."""

    out_dim: int
    cond_hidden: Sequence[int]
    config: DiTConfig = DiTConfig()

    @nn.compact
    def __call__(self, obs: jnp.ndarray, x: jnp.ndarray, *times: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        batch, tokens = x.shape[0], cfg.tokens
        cols = [fourier_features(as_column(t, batch).astype(x.dtype), cfg.time_features) for t in times]
        c = nn.silu(MLP(self.cond_hidden, cfg.width, activation="silu")(jnp.concatenate([obs, *cols], -1)))
        pos = self.param("pos", nn.initializers.normal(0.02), (tokens, cfg.width))
        h = nn.Dense(cfg.width)(x.reshape(batch, tokens, -1)) + pos
        for _ in range(cfg.depth):
            mod = nn.Dense(6 * cfg.width, kernel_init=nn.initializers.zeros)(c)
            s1, g1, b1, s2, g2, b2 = jnp.split(mod, 6, -1)
            y = _modulate(h, b1, s1)
            h = h + g1[:, None] * nn.MultiHeadDotProductAttention(num_heads=cfg.heads)(y, y)
            y = _modulate(h, b2, s2)
            h = h + g2[:, None] * nn.Dense(cfg.width)(nn.gelu(nn.Dense(4 * cfg.width)(y)))
        shift, scale = jnp.split(nn.Dense(2 * cfg.width, kernel_init=nn.initializers.zeros)(c), 2, -1)
        out = nn.Dense(self.out_dim // tokens, kernel_init=nn.initializers.zeros)(_modulate(h, shift, scale))
        return out.reshape(batch, self.out_dim)
