"""QC best-of-N (docs/algorithms.md#qc-bon, QC's `best-of-n` actor): no actor network at all.

A flow-matching base (noise at τ=0, data at τ=1) is trained by BC next to the Q-chunking critic.
To act — and to form the critic's target action a' — draw N noises, decode each by K Euler steps,
and keep the candidate the critic scores highest:

    a = argmax_{a_n, n ≤ N} agg_j Q_j(s, a_n),   a_n = clip(Euler_K(s, ε_n)),  ε_n ~ prior

The online critic ranks candidates both when acting and for a' (as in QC's code).
Cost: N·K base evaluations per state, so N dominates training time on a CPU.
Shapes: obs (B, obs_dim), candidates (B, N, d), chunks (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from steerflow import critic as qc
from steerflow.agents.common import AgentState, EnvSpec, apply_gradients, base_policy, create_state
from steerflow.generative import flow, latent, meanflow


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=qc.CriticConfig)
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)
    decoder: str = "fm-bptt"  # K-step Euler samples of the FM base
    num_samples: int = 32  # N
    geometry: str = "normal"
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)


# config fields that change only how a trained state acts (`steerflow eval RUN --set`); the critic of a
# trained state was fitted with targets from the training value, which its record keeps
INFERENCE_KEYS = ("num_samples",)

def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    latent.check_geometry(config.geometry)
    if config.num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {config.num_samples}")
    critic = qc.make_critic(config.critic)
    k_critic, k_base, k_state = jax.random.split(key, 3)
    params = {"critic": critic.init(k_critic, jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim))),
              "base": base_policy(config, spec).init(k_base, spec.obs_dim, spec.chunk_dim)}
    return create_state(params, {"critic": params["critic"]}, k_state, config, spec)


def candidates(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    """N clipped base samples per state: (B, N, d)."""
    noise = latent.sample_prior(key, (obs.shape[0] * state.config.num_samples, state.spec.chunk_dim),
                                state.config.geometry)
    return decode_candidates(state, obs, noise)


def decode_candidates(state: AgentState, obs: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """The candidates decoded from `noise` (B·N, d): (B, N, d)."""
    config, spec = state.config, state.spec
    batch, n = obs.shape[0], config.num_samples
    rep_obs = jnp.repeat(obs, n, axis=0)
    chunks = base_policy(config, spec).decode(state.params["base"], rep_obs, noise)
    return jnp.clip(chunks, -1.0, 1.0).reshape(batch, n, spec.chunk_dim)


def noise_spec(config, spec: EnvSpec):
    """(per-row noise shape, prior geometry) `act` draws; `act_noise` takes that draw explicitly."""
    return (config.num_samples, spec.chunk_dim), config.geometry


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    noise = latent.sample_prior(key, (obs.shape[0] * state.config.num_samples, state.spec.chunk_dim),
                                state.config.geometry)
    return act_noise(state, obs, noise.reshape(obs.shape[0], state.config.num_samples, -1))


def act_noise(state: AgentState, obs: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """The best of the N candidates decoded from `noise` (B, N, d)."""
    cands = decode_candidates(state, obs, noise.reshape(-1, noise.shape[-1]))
    return best_candidate(state.config.critic, state.params["critic"], obs, cands)


def best_candidate(critic_config: qc.CriticConfig, critic_params: dict, obs: jnp.ndarray,
                   cands: jnp.ndarray) -> jnp.ndarray:
    """The candidate (B, N, d) → (B, d) that the critic's aggregate scores highest per state."""
    batch, n, d = cands.shape
    q = qc.make_critic(critic_config).apply(critic_params, jnp.repeat(obs, n, axis=0), cands.reshape(batch * n, d))
    best = jnp.argmax(qc.aggregate(q, critic_config).reshape(batch, n), axis=1)
    return jnp.take_along_axis(cands, best[:, None, None], axis=1)[:, 0]


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    config, spec = state.config, state.spec
    critic, base = qc.make_critic(config.critic), base_policy(config, spec)
    rng, k_next, k_base, k_prior = jax.random.split(state.rng, 4)
    next_actions = act(state, batch["next_observations"], k_next)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, config.geometry)

    def loss_fn(params):
        critic_loss, critic_info = qc.critic_loss(critic, params["critic"], state.target_params["critic"],
                                                  batch, next_actions, config.critic, spec.horizon)
        bc_loss, bc_info = base.loss(params["base"], batch["observations"], batch["actions"], prior, k_base)
        return critic_loss + bc_loss, {**critic_info, **bc_info}

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, tau=config.critic.tau).replace(rng=rng), metrics
