"""Neural-network building blocks shared by every method.

Shapes: observations `(B, obs_dim)`, flattened action chunks `(B, d)` with `d = H·A`,
scalar times `(B,)` or `(B, 1)`. Every network here is a plain MLP (GELU by default; SiLU for the
QPILOTS protocol), optionally with LayerNorm after each hidden activation (the Q-chunking critic
uses it; the flow/MeanFlow policies do not, docs/algorithms.md#q-chunking-critic and docs/algorithms.md#flow-matching). Times enter a conditional field as raw
scalars by default, or through a fixed Fourier-feature embedding (`time_features`, QPILOTS: 64).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


ACTIVATIONS = {"gelu": nn.gelu, "silu": nn.silu}


def default_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")


class MLP(nn.Module):
    """`len(hidden)` hidden layers (GELU or SiLU), then a linear output layer of size `out_dim`."""

    hidden: Sequence[int]
    out_dim: int
    layer_norm: bool = False
    final_init_scale: float = 1.0
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=default_init())(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return nn.Dense(self.out_dim, kernel_init=default_init(self.final_init_scale))(x)


class CriticEnsemble(nn.Module):
    """`num_critics` independent Q(s, a) heads; returns `(num_critics, B)`."""

    hidden: Sequence[int]
    num_critics: int = 2
    activation: str = "gelu"

    @nn.compact
    def __call__(self, obs: jnp.ndarray, action: jnp.ndarray) -> jnp.ndarray:
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        q = ensemble(self.hidden, 1, layer_norm=True, activation=self.activation)(jnp.concatenate([obs, action], -1))
        return q[..., 0]


def as_column(t: jnp.ndarray, batch: int) -> jnp.ndarray:
    """Broadcast a scalar or `(B,)` time to a `(B, 1)` column."""
    return jnp.broadcast_to(jnp.reshape(t, (-1, 1)) if jnp.ndim(t) else t, (batch, 1))


def fourier_features(t: jnp.ndarray, dim: int) -> jnp.ndarray:
    """Fixed embedding [cos(k·t), sin(k·t)], k = 0 … dim/2 − 1, of a (B, 1) time column: (B, dim).
    Integer frequencies as in the QAM/QPILOTS code's non-learnable `FourierFeatures`."""
    freqs = jnp.arange(dim // 2, dtype=t.dtype)
    return jnp.concatenate([jnp.cos(t * freqs), jnp.sin(t * freqs)], -1)


class ConditionalField(nn.Module):
    """MLP over `[obs, x, times...]`: the velocity net of FM, the π_β net of MeanFlow and the
    meta flow map of QPILOTS-M.

    `times` are scalars per sample (FM: τ; MeanFlow: t and t − r; MFM: τ, u, w), appended as raw
    features (`time_features=0`) or each through its own `time_features`-dim Fourier embedding.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "gelu"
    time_features: int = 0

    @nn.compact
    def __call__(self, obs: jnp.ndarray, x: jnp.ndarray, *times: jnp.ndarray) -> jnp.ndarray:
        batch = x.shape[0]
        cols = [as_column(t, batch).astype(x.dtype) for t in times]
        if self.time_features:
            cols = [fourier_features(c, self.time_features) for c in cols]
        return MLP(self.hidden, self.out_dim, activation=self.activation)(jnp.concatenate([obs, x, *cols], -1))
