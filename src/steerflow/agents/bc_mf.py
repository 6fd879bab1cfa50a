"""BC-MF: the MeanFlow base policy alone, trained by behaviour cloning (docs/algorithms.md#meanflow, docs/algorithms.md#bc).

Time convention (MeanFlow): data at t=0, noise at t=1; act decodes a fresh prior latent in one
step, a = clip(π_β(s, z, 0, 1)), z ~ prior. No critic. The same code trains BC-FM (`bc_fm`)
with the flow-matching decoder. Shapes: obs (B, obs_dim), chunks (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from steerflow.agents.common import AgentState, EnvSpec, apply_gradients, base_policy, create_state
from steerflow.encoders import EncoderConfig
from steerflow.generative import flow, latent, meanflow


@dataclass(frozen=True)
class Config:
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)  # used by the fm-* decoders
    decoder: str = "meanflow"  # meanflow | fm-bptt (K Euler steps) | fm-1step
    geometry: str = "sphere"  # prior of the base policy's noise endpoint: sphere | normal | truncated
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # image observations only (steerflow.encoders)


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    latent.check_geometry(config.geometry)
    k_base, k_state = jax.random.split(key)
    params = {"base": base_policy(config, spec).init(k_base, spec.obs_dim, spec.chunk_dim)}
    return create_state(params, {}, k_state, config, spec)


def noise_spec(config, spec: EnvSpec):
    """(per-row noise shape, prior geometry) `act` draws; `act_noise` takes that draw explicitly."""
    return (spec.chunk_dim,), config.geometry


def act_noise(state: AgentState, obs: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(base_policy(state.config, state.spec).decode(state.params["base"], obs, z), -1.0, 1.0)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return act_noise(state, obs, latent.sample_prior(key, (obs.shape[0], state.spec.chunk_dim), state.config.geometry))


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    base = base_policy(state.config, state.spec)
    rng, k_base, k_prior = jax.random.split(state.rng, 3)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, state.config.geometry)

    def loss_fn(params):
        return base.loss(params["base"], batch["observations"], batch["actions"], prior, k_base)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads).replace(rng=rng), metrics
