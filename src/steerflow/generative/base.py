"""One interface over the generative base policies, so every method can swap its decoder.

A `BasePolicy` maps (observation, latent) to an action chunk and knows its own BC loss:
- `meanflow`: the one-step MeanFlow of docs/algorithms.md#meanflow (decode = π_β(s, z, 0, 1), one evaluation);
- `fm-bptt`:  flow matching (docs/algorithms.md#flow-matching) decoded by K Euler steps; when a loss differentiates
              through `decode` the gradient is back-propagated through all K steps (FM-LPS);
- `fm-1step`: the same FM net decoded by a single Euler step (FM-1step-LPS).

The latent is the base's noise endpoint in either time convention (MeanFlow: t = 1; FM: τ = 0),
drawn from the configured geometry (`generative.latent`). `decode` is unclipped; callers clip.
Shapes: obs (B, obs_dim), latents and chunks (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from steerflow.generative import flow, meanflow

DECODERS = ("meanflow", "fm-bptt", "fm-1step")


@dataclass(frozen=True)
class BasePolicy:
    decoder: str
    net: Any
    mf_config: meanflow.MeanFlowConfig
    fm_config: flow.FlowConfig

    def init(self, key: jax.Array, obs_dim: int, chunk_dim: int):
        obs, chunk, one = jnp.zeros((1, obs_dim)), jnp.zeros((1, chunk_dim)), jnp.ones((1,))
        if self.decoder == "meanflow":
            return self.net.init(key, obs, chunk, 0.0 * one, one)
        return self.net.init(key, obs, chunk, one)

    def loss(self, params, obs, actions, latents, key, valid=None) -> tuple[jnp.ndarray, dict]:
        """The base's behaviour-cloning loss: L_MF or L_FM."""
        if self.decoder == "meanflow":
            return meanflow.meanflow_loss(self.net.apply, params, obs, actions, latents, key, self.mf_config)
        return flow.fm_loss(self.net.apply, params, obs, actions, latents, key, valid)

    def decode(self, params, obs, latents) -> jnp.ndarray:
        """latent → unclipped chunk; differentiable in params and latents."""
        if self.decoder == "meanflow":
            return meanflow.decode(self.net.apply, params, obs, latents)
        steps = 1 if self.decoder == "fm-1step" else self.fm_config.steps
        return flow.sample(self.net.apply, params, obs, latents, steps)


def make_base(decoder: str, mf_config: meanflow.MeanFlowConfig, fm_config: flow.FlowConfig,
              chunk_dim: int) -> BasePolicy:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    net = (meanflow.make_net(mf_config, chunk_dim) if decoder == "meanflow"
           else flow.make_net(fm_config, chunk_dim))
    return BasePolicy(decoder, net, mf_config, fm_config)
