"""Latent Policy Steering (LPS, docs/algorithms.md#lps): the flagship method.

A one-step MeanFlow base π_β (data at t=0, noise at t=1; decode at r=0, t=1) is trained by
behaviour cloning; a deterministic latent actor h_φ(s), projected onto the prior's support
(sphere of radius √d by default), is trained by back-propagating the Q-chunking critic through
the base policy, whose parameters — like the critic's — are frozen inside that loss:

    L_actor  = − λ · agg_j Q_j(s, π_β(s, l_φ(s), 0, 1)),    λ = 1 / sg(mean|Q|)
               (agg = the critic's aggregate, `critic.aggregate`: the mean by default, as the paper;
               `--set critic=qpilots` makes it a 10-critic pessimistic mean − 0.5·std, which the
               actor then climbs too)
               (`clip_actor_chunk`: Q_j(s, clip(π_β(...))), as the authors' code)
    L_total  = α · L_MF(β) + L_actor(φ) + L_critic(θ)        (α = 1 except in the α study)
    a'       = clip(π_β(s', l_φ(s'), 0, 1))                  (critic target action)
    act(s)   = clip(π_β(s, l_φ(s), 0, 1))                    (deterministic chunk, open-loop)

Inference-time selection (`select=N`, beyond the paper; docs/algorithms.md#lps-selection): act
decodes l_φ(s) and N latents near it, l_n = P(l_φ(s) + σ·ε_n) with ε_n ~ N(0, I) and P the
projection onto the geometry, and keeps the chunk the critic's `select_rank` aggregate (min over
the ensemble by default) ranks first. Training, the critic's a' included, never selects, so
`steerflow eval RUN --set select=N` applies it to a trained checkpoint (`INFERENCE_KEYS`).

There is no behaviour-regularisation weight: the frozen generative prior is the constraint.
Ablations (paper §VII) are config switches: `geometry` sphere | normal | truncated, `decoder`
meanflow | fm-bptt (FM-LPS: K Euler steps back-propagated) | fm-1step, and
`base.parameterisation` action | displacement.
Shapes: obs (B, obs_dim); chunks and latents (B, d), d = H·A.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp

from steerflow import critic as qc
from steerflow.agents.common import (AgentState, EnvSpec, base_policy, critic_net, init_critic_base_actor, joint_update,
                                     obs_net)
from steerflow.agents.qc_bon import best_candidate
from steerflow.encoders import EncoderConfig
from steerflow.generative import flow, latent, meanflow
from steerflow.nets import MLP


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=qc.CriticConfig)
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)  # used by the fm-* decoders
    decoder: str = "meanflow"  # meanflow | fm-bptt | fm-1step
    actor_hidden: Sequence[int] = (512, 512, 512, 512)  # width/depth not given by the paper
    geometry: str = "sphere"  # latent prior of the base and support of the actor
    normalize_q: bool = True  # λ = 1/sg(mean|Q|), the paper's "unit norm" critic loss
    alpha: float = 1.0  # weight of the base's BC loss; provably inert under Adam (docs/algorithms.md#lps, LPS paper §V-C)
    # clip the decoded chunk to [-1, 1] before the critic in the actor loss (the authors' code
    # does; the critic never trained outside the box, and the clip zeroes the gradient there)
    clip_actor_chunk: bool = False
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # image observations only (steerflow.encoders)
    select: int = 0  # N > 0: act picks the best of l_φ(s) and N latents near it (0: the actor's chunk)
    select_sigma: float = 0.3  # σ of the latents near l_φ(s), before projection (radius √d ≈ 5 for d = 25)
    select_rank: str = "min"  # critic aggregate that ranks them: min | mean | pessimistic


# config fields that change only how a trained state acts: `steerflow eval RUN --set` may change them
INFERENCE_KEYS = ("select", "select_sigma", "select_rank")


def check_config(config: Config) -> None:
    latent.check_geometry(config.geometry)
    if config.select < 0 or config.select_sigma < 0:
        raise ValueError(f"select and select_sigma must be ≥ 0, got {config.select} and {config.select_sigma}")
    if config.select_rank not in qc.AGGREGATES:
        raise ValueError(f"unknown select_rank {config.select_rank!r}; choose one of {qc.AGGREGATES}")


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    check_config(config)
    actor = obs_net(MLP(tuple(config.actor_hidden), spec.chunk_dim), config, spec)
    return init_critic_base_actor(key, spec, config, actor, jnp.zeros((1, spec.obs_dim)))


def steer(state: AgentState, params: dict, obs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(l_φ(s), π_β(s, l_φ(s))): the actor's latent and its unclipped decoded chunk."""
    config = state.config
    raw = obs_net(MLP(tuple(config.actor_hidden), state.spec.chunk_dim), config, state.spec).apply(params["actor"], obs)
    latents = latent.constrain(raw, config.geometry)
    return latents, base_policy(config, state.spec).decode(params["base"], obs, latents)


def noise_spec(config, spec: EnvSpec):
    """None: LPS acts deterministically; with `select=N`, the N perturbations ε_n ~ N(0, I)."""
    return None if config.select == 0 else ((config.select, spec.chunk_dim), "normal")


def act_noise(state: AgentState, obs: jnp.ndarray, noise=None) -> jnp.ndarray:
    """clip(π_β(s, l_φ(s))), or with `noise` (B, N, d) the best of it and the N nearby chunks."""
    latents, chunk = steer(state, state.params, obs)
    if noise is None:
        return jnp.clip(chunk, -1.0, 1.0)
    config, (batch, n, d) = state.config, noise.shape
    near = latent.constrain(latents[:, None] + config.select_sigma * noise, config.geometry)
    decoded = base_policy(config, state.spec).decode(state.params["base"], jnp.repeat(obs, n, axis=0),
                                                     near.reshape(batch * n, d))
    cands = jnp.clip(jnp.concatenate([chunk[:, None], decoded.reshape(batch, n, d)], 1), -1.0, 1.0)
    rank = dataclasses.replace(config.critic, aggregate=config.select_rank)
    return best_candidate(rank, state.params["critic"], obs, cands)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array | None = None) -> jnp.ndarray:
    spec = noise_spec(state.config, state.spec)
    if spec is None:
        return act_noise(state, obs)
    return act_noise(state, obs, jax.random.normal(key, (obs.shape[0], *spec[0])))


def actor_loss(state: AgentState, params: dict, obs: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """−λ·agg_j Q_j(s, π_β(s, l_φ(s), 0, 1)); β and θ are frozen *inside* this loss, so its
    gradient reaches only the latent actor φ (through π_β and Q)."""
    critic = critic_net(state.config, state.spec)
    frozen = {"actor": params["actor"], "base": jax.lax.stop_gradient(params["base"])}
    latents, steered = steer(state, frozen, obs)
    scored = jnp.clip(steered, -1.0, 1.0) if state.config.clip_actor_chunk else steered
    q = critic.apply(jax.lax.stop_gradient(params["critic"]), obs, scored)  # (J, B)
    scale = 1.0 / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)) + 1e-6) if state.config.normalize_q else 1.0
    climbed = q if state.config.critic.aggregate == "mean" else qc.aggregate(q, state.config.critic)
    loss = -scale * jnp.mean(climbed)
    return loss, {"actor_loss": loss, "actor_q": jnp.mean(q),
                  "latent_norm": jnp.mean(jnp.linalg.norm(latents, axis=-1)),
                  "steered_abs_max": jnp.mean(jnp.max(jnp.abs(steered), -1))}


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    rng, k_base, k_prior = jax.random.split(state.rng, 3)
    next_actions = act_noise(state, batch["next_observations"])  # a' = clip(π_β(s', l_φ(s'))), no selection
    prior = latent.sample_prior(k_prior, batch["actions"].shape, state.config.geometry)
    return joint_update(state, batch, next_actions, prior, k_base, rng,
                        lambda params: actor_loss(state, params, batch["observations"]), state.config.alpha)
