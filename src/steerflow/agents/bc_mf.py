"""BC-MF: the MeanFlow base policy alone, trained by behaviour cloning (SPEC §3.2, §4.3).

Time convention (MeanFlow): data at t=0, noise at t=1; act decodes a fresh prior latent in one
step, a = clip(π_β(s, z, 0, 1)), z ~ prior. No critic. Shapes: obs (B, obs_dim), chunks (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from steerflow.agents.common import AgentState, EnvSpec, apply_gradients, create_state
from steerflow.generative import latent, meanflow


@dataclass(frozen=True)
class Config:
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)
    geometry: str = "sphere"  # prior of the base policy's noise endpoint: sphere | normal
    learning_rate: float = 3e-4


def init(key: jax.Array, spec: EnvSpec, config: Config = Config()) -> AgentState:
    latent.check_geometry(config.geometry)
    base = meanflow.make_net(config.base, spec.chunk_dim)
    k_base, k_state = jax.random.split(key)
    obs, chunk = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim))
    params = {"base": base.init(k_base, obs, chunk, jnp.zeros((1,)), jnp.ones((1,)))}
    return create_state(params, {}, k_state, config, spec)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    base = meanflow.make_net(state.config.base, state.spec.chunk_dim)
    z = latent.sample_prior(key, (obs.shape[0], state.spec.chunk_dim), state.config.geometry)
    return jnp.clip(meanflow.decode(base.apply, state.params["base"], obs, z), -1.0, 1.0)


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    base = meanflow.make_net(state.config.base, state.spec.chunk_dim)
    rng, k_rt, k_prior = jax.random.split(state.rng, 3)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, state.config.geometry)

    def loss_fn(params):
        return meanflow.meanflow_loss(base.apply, params["base"], batch["observations"],
                                      batch["actions"], prior, k_rt, state.config.base)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads).replace(rng=rng), metrics
