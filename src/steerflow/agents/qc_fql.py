"""QC-FQL (docs/algorithms.md#qc-fql): flow Q-learning with action chunking — the behaviour-regularised baseline.

A flow-matching base v_ω (noise at τ=0, data at τ=1) is trained by BC; a one-step actor
μ_ψ(s, ε) is distilled from the base's K-step Euler sample of the same noise while it climbs the
critic, traded off by the regularisation weight α:

    L = L_FM(ω) + α·mean ‖μ_ψ(s, ε) − sg(clip(Euler_K(s, ε)))‖² − λ·mean_j Q_j(s, clip(μ_ψ(s, ε))) + L_critic
    a' = clip(μ_ψ(s', ε')),  act(s) = clip(μ_ψ(s, ε)),  ε, ε' fresh prior noise

λ = 1 as in QC's code (`normalize_q` gives FQL's λ = 1/sg(mean|Q|)). The critic is frozen
inside the Q term and the teacher is a constant. With `decoder="meanflow"` this is QC-MFQL
(`qc_mfql`): the teacher is the one-step MeanFlow decode.
Shapes: obs (B, obs_dim), chunks and noises (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp

from steerflow import critic as qc
from steerflow.agents.common import AgentState, EnvSpec, base_policy, init_critic_base_actor, joint_update
from steerflow.generative import flow, latent, meanflow
from steerflow.nets import MLP


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=qc.CriticConfig)
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)  # qc-mfql's base
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)
    decoder: str = "fm-bptt"  # teacher: K Euler steps of the FM base (meanflow for QC-MFQL)
    actor_hidden: Sequence[int] = (512, 512, 512, 512)
    alpha: float = 300.0  # distillation (behaviour-regularisation) weight; FQL's cube-single value
    normalize_q: bool = False  # QC's acfql leaves the Q term unnormalised
    geometry: str = "normal"  # prior of the base's noise and of the actor's ε
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)


def _actor(config: Config, spec: EnvSpec) -> MLP:
    """μ_ψ over [s, ε], no time input."""
    return MLP(tuple(config.actor_hidden), spec.chunk_dim)


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    latent.check_geometry(config.geometry)
    obs, chunk = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim))
    return init_critic_base_actor(key, spec, config, _actor(config, spec), jnp.concatenate([obs, chunk], -1))


def one_step(state: AgentState, actor_params, obs: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """μ_ψ(s, ε), unclipped."""
    return _actor(state.config, state.spec).apply(actor_params, jnp.concatenate([obs, noise], -1))


def noise_spec(config, spec: EnvSpec):
    """(per-row noise shape, prior geometry) `act` draws; `act_noise` takes that draw explicitly."""
    return (spec.chunk_dim,), config.geometry


def act_noise(state: AgentState, obs: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(one_step(state, state.params["actor"], obs, noise), -1.0, 1.0)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return act_noise(state, obs, latent.sample_prior(key, (obs.shape[0], state.spec.chunk_dim), state.config.geometry))


def actor_loss(state: AgentState, params: dict, obs: jnp.ndarray, noise: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """α·distillation − λ·Q: reaches only ψ (teacher and critic are constants here)."""
    config = state.config
    base = base_policy(config, state.spec)
    teacher = jax.lax.stop_gradient(jnp.clip(base.decode(params["base"], obs, noise), -1.0, 1.0))
    mu = one_step(state, params["actor"], obs, noise)
    distill = jnp.mean((mu - teacher) ** 2)
    q = qc.make_critic(config.critic).apply(jax.lax.stop_gradient(params["critic"]), obs, jnp.clip(mu, -1.0, 1.0))
    scale = 1.0 / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)) + 1e-6) if config.normalize_q else 1.0
    q_loss = -scale * jnp.mean(q)
    loss = config.alpha * distill + q_loss
    return loss, {"actor_loss": loss, "distill_loss": distill, "actor_q": jnp.mean(q)}


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    rng, k_next, k_base, k_prior, k_noise = jax.random.split(state.rng, 5)
    next_actions = act(state, batch["next_observations"], k_next)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, state.config.geometry)
    noise = latent.sample_prior(k_noise, batch["actions"].shape, state.config.geometry)
    return joint_update(state, batch, next_actions, prior, k_base, rng,
                        lambda params: actor_loss(state, params, batch["observations"], noise))
