"""LPSD (docs/algorithms.md#lpsd, LPS paper appendix E): LPS with a stochastic latent actor and an explicit
distillation regulariser — the variant that brings a weight α back.

The latent actor l_φ(s, ε) takes the state and a prior sample ε (same geometry as the base's
latents) and is projected onto that geometry; the MeanFlow base π_β and the critic are frozen
inside the actor loss, as in LPS:

    a_φ      = π_β(s, l_φ(s, ε), 0, 1)
    L_actor  = − λ·mean_j Q_j(s, a_φ) + α · R,   λ = 1/sg(mean|Q|)
    R        = mean ‖a_φ − sg(π_β(s, ε, 0, 1))‖²      (`regularizer="action"`, the paper's text)
             = mean ‖l_φ(s, ε) − ε‖²                   (`regularizer="latent"`, the other reading)
    L_total  = L_MF(β) + L_actor(φ) + L_critic(θ);  a' and act use a fresh ε.

Eq. 11 of the paper did not survive extraction, hence the flag. MeanFlow time convention: data
at t=0, noise at t=1. Shapes: obs (B, obs_dim), latents and chunks (B, d).
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

REGULARIZERS = ("action", "latent")


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=qc.CriticConfig)
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)
    decoder: str = "meanflow"
    actor_hidden: Sequence[int] = (512, 512, 512, 512)
    geometry: str = "sphere"
    regularizer: str = "action"  # action | latent (the two readings of the lost Eq. 11)
    alpha: float = 1.0  # regulariser weight (not given in the paper)
    normalize_q: bool = True
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)


def _actor(config: Config, spec: EnvSpec) -> MLP:
    return MLP(tuple(config.actor_hidden), spec.chunk_dim)


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    latent.check_geometry(config.geometry)
    if config.regularizer not in REGULARIZERS:
        raise ValueError(f"unknown LPSD regularizer {config.regularizer!r}; choose one of {REGULARIZERS}")
    obs, chunk = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim))
    return init_critic_base_actor(key, spec, config, _actor(config, spec), jnp.concatenate([obs, chunk], -1))


def steer(state: AgentState, params: dict, obs: jnp.ndarray, eps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(l_φ(s, ε), π_β(s, l_φ(s, ε))), unclipped."""
    config = state.config
    raw = _actor(config, state.spec).apply(params["actor"], jnp.concatenate([obs, eps], -1))
    latents = latent.constrain(raw, config.geometry)
    return latents, base_policy(config, state.spec).decode(params["base"], obs, latents)


def noise_spec(config, spec: EnvSpec):
    """(per-row noise shape, prior geometry) `act` draws; `act_noise` takes that draw explicitly."""
    return (spec.chunk_dim,), config.geometry


def act_noise(state: AgentState, obs: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(steer(state, state.params, obs, eps)[1], -1.0, 1.0)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return act_noise(state, obs, latent.sample_prior(key, (obs.shape[0], state.spec.chunk_dim), state.config.geometry))


def actor_loss(state: AgentState, params: dict, obs: jnp.ndarray, eps: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """−λ·Q + α·R; β and θ frozen inside, so only φ moves."""
    config = state.config
    frozen = {"actor": params["actor"], "base": jax.lax.stop_gradient(params["base"])}
    latents, steered = steer(state, frozen, obs, eps)
    q = qc.make_critic(config.critic).apply(jax.lax.stop_gradient(params["critic"]), obs, steered)
    scale = 1.0 / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)) + 1e-6) if config.normalize_q else 1.0
    if config.regularizer == "action":
        anchor = base_policy(config, state.spec).decode(frozen["base"], obs, eps)
        reg = jnp.mean((steered - jax.lax.stop_gradient(anchor)) ** 2)
    else:
        reg = jnp.mean((latents - eps) ** 2)
    loss = -scale * jnp.mean(q) + config.alpha * reg
    return loss, {"actor_loss": loss, "actor_q": jnp.mean(q), "regularizer": reg}


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    rng, k_next, k_base, k_prior, k_eps = jax.random.split(state.rng, 5)
    next_actions = act(state, batch["next_observations"], k_next)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, state.config.geometry)
    eps = latent.sample_prior(k_eps, batch["actions"].shape, state.config.geometry)
    return joint_update(state, batch, next_actions, prior, k_base, rng,
                        lambda params: actor_loss(state, params, batch["observations"], eps))
