"""DSRL-NA (docs/algorithms.md#dsrl-na): latent steering through a *distilled* latent critic ("noise aliasing").

A flow-matching base v_ω (noise at τ=0, data at τ=1) is trained by BC and read through its EMA
copy ω̄ as a decoder D(s, w) = clip(Euler_K(v_ω̄, s, w)). Three value functions:

    L_critic = Q-chunking TD loss with a' = D(s', w'),  w' from the latent actor at s'
    L_NA     = mean_j (Q_ψ_j(s, w) − sg(Q_j(s, D(s, w))))²,   w ~ prior      (latent critic ψ)
    L_actor  = − λ·mean_j Q_ψ_j(s, w_φ(s))            [+ temp·log π_φ(w|s) in the SAC variant]
    L_total  = α·L_FM(ω) + L_critic(θ) + L_NA(ψ) + L_actor(φ) [+ L_temp]

so the actor never sees the action-space critic's gradient — only its distillation into latent
space, which is what LPS replaces. Variants (`variant`):
- `deterministic` (the LPS paper's re-implementation, agent `dsrl-na`): w_φ(s) = l(h_φ(s)),
  projected onto the latent geometry (sphere by default), NA latents from the same prior, no
  entropy term, acting deterministic.
- `gaussian` (DSRL's original, agent `dsrl-na-sac`): w = b·tanh(u), u ~ N(μ_φ(s), σ_φ(s)²),
  b = `noise_scale`, SAC entropy with a learned temperature (target entropy −d/2); the base
  prior and the NA latents are N(0, I). Acting samples w.
α weights L_FM only for the sensitivity study (paper §V-C); it is 1 otherwise.
Shapes: obs (B, obs_dim), latents and chunks (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp

from steerflow import critic as qc
from steerflow.agents.common import (AgentState, EnvSpec, apply_gradients, base_policy, create_state, critic_net,
                                     obs_net)
from steerflow.encoders import EncoderConfig
from steerflow.generative import flow, latent, meanflow
from steerflow.nets import MLP

VARIANTS = ("deterministic", "gaussian")
LOG_STD_RANGE = (-5.0, 2.0)


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=qc.CriticConfig)  # also the latent critic's size
    base: meanflow.MeanFlowConfig = field(default_factory=meanflow.MeanFlowConfig)
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)
    decoder: str = "fm-bptt"  # D decodes by K Euler steps of the (EMA) FM base
    actor_hidden: Sequence[int] = (512, 512, 512, 512)
    variant: str = "deterministic"  # deterministic (LPS paper) | gaussian (original DSRL, SAC)
    geometry: str = "sphere"  # base prior, NA latents and actor support (gaussian variant: normal)
    noise_scale: float = 1.0  # b of the gaussian variant (QAM: cube-double 1.0, scene 0.4)
    normalize_q: bool = False  # λ = 1/sg(mean|Q_ψ|) on the actor loss
    init_temperature: float = 1.0  # gaussian variant
    alpha: float = 1.0  # weight of the base's BC loss, only for the sensitivity study
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # image observations only (steerflow.encoders)


def _actor(config: Config, spec: EnvSpec) -> MLP:
    out = 2 * spec.chunk_dim if config.variant == "gaussian" else spec.chunk_dim
    return obs_net(MLP(tuple(config.actor_hidden), out), config, spec)


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    latent.check_geometry(config.geometry)
    if config.variant not in VARIANTS:
        raise ValueError(f"unknown DSRL variant {config.variant!r}; choose one of {VARIANTS}")
    if config.variant == "gaussian" and config.geometry != "normal":
        raise ValueError("DSRL variant=gaussian draws its latents from N(0, I): set geometry=normal "
                         "(or use the agent dsrl-na-sac)")
    critic, base = critic_net(config, spec), base_policy(config, spec)
    k_critic, k_latent, k_base, k_actor, k_state = jax.random.split(key, 5)
    obs, chunk = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim))
    params = {
        "critic": critic.init(k_critic, obs, chunk),
        "latent_critic": critic.init(k_latent, obs, chunk),  # Q_ψ(s, w): same architecture
        "base": base.init(k_base, spec.obs_dim, spec.chunk_dim),
        "actor": _actor(config, spec).init(k_actor, obs),
    }
    if config.variant == "gaussian":
        params["log_temp"] = jnp.log(jnp.asarray(config.init_temperature, jnp.float32))
    targets = {"critic": params["critic"], "base": params["base"]}  # base target = the EMA decoder
    return create_state(params, targets, k_state, config, spec)


def actor_latents(state: AgentState, actor_params, obs: jnp.ndarray, key: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(w, log π(w|s)) from the latent actor; log π = 0 for the deterministic variant.

    The gaussian log-density is that of the tanh-squashed sample before scaling by b (a constant
    shift that does not change any gradient)."""
    eps = None if state.config.variant == "deterministic" else jax.random.normal(key, (obs.shape[0], state.spec.chunk_dim))
    return latents_from_noise(state, actor_params, obs, eps)


def latents_from_noise(state: AgentState, actor_params, obs: jnp.ndarray, eps) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`actor_latents` with the gaussian variant's N(0, I) draw `eps` (B, d) given (None when deterministic)."""
    config = state.config
    out = _actor(config, state.spec).apply(actor_params, obs)
    if config.variant == "deterministic":
        return latent.constrain(out, config.geometry), jnp.zeros(obs.shape[0])
    mean, log_std = jnp.split(out, 2, axis=-1)
    log_std = jnp.clip(log_std, *LOG_STD_RANGE)
    u = mean + jnp.exp(log_std) * eps
    log_prob = jnp.sum(jax.scipy.stats.norm.logpdf(eps) - log_std - jnp.log1p(-jnp.tanh(u) ** 2 + 1e-6), -1)
    return config.noise_scale * jnp.tanh(u), log_prob


def decoder_map(state: AgentState, obs: jnp.ndarray, latents: jnp.ndarray) -> jnp.ndarray:
    """D(s, w) = clip(Euler_K(v_ω̄, s, w)) through the EMA base, differentiable in w (the map the
    latent critic is distilled from; the toy study pulls the action critic back through it)."""
    chunk = base_policy(state.config, state.spec).decode(state.target_params["base"], obs, latents)
    return jnp.clip(chunk, -1.0, 1.0)


def decode(state: AgentState, obs: jnp.ndarray, latents: jnp.ndarray) -> jnp.ndarray:
    """D(s, w) with no gradient, as every DSRL loss uses it."""
    return jax.lax.stop_gradient(decoder_map(state, obs, latents))


def noise_spec(config, spec: EnvSpec):
    """(per-row noise shape, prior geometry) `act` draws (none when deterministic)."""
    return None if config.variant == "deterministic" else ((spec.chunk_dim,), "normal")


def act_noise(state: AgentState, obs: jnp.ndarray, eps=None) -> jnp.ndarray:
    return decode(state, obs, latents_from_noise(state, state.params["actor"], obs, eps)[0])


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return decode(state, obs, actor_latents(state, state.params["actor"], obs, key)[0])


def latent_critic_loss(state: AgentState, params: dict, obs: jnp.ndarray, key: jax.Array) -> tuple[jnp.ndarray, dict]:
    """Noise aliasing: regress Q_ψ(s, w) on the action critic at the decoded chunk, w ~ prior."""
    config = state.config
    critic = critic_net(config, state.spec)
    w = latent.sample_prior(key, (obs.shape[0], state.spec.chunk_dim), config.geometry)
    q_action = jax.lax.stop_gradient(critic.apply(params["critic"], obs, decode(state, obs, w)))  # (J, B)
    q_latent = critic.apply(params["latent_critic"], obs, w)
    loss = jnp.mean((q_latent - q_action) ** 2)
    return loss, {"na_loss": loss, "latent_q": jnp.mean(q_latent)}


def actor_loss(state: AgentState, params: dict, obs: jnp.ndarray, key: jax.Array) -> tuple[jnp.ndarray, dict]:
    """−λ·Q_ψ(s, w_φ(s)) [+ temp·log π]: reaches only φ (and the temperature through L_temp)."""
    config = state.config
    w, log_prob = actor_latents(state, params["actor"], obs, key)
    q = critic_net(config, state.spec).apply(jax.lax.stop_gradient(params["latent_critic"]), obs, w)
    scale = 1.0 / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)) + 1e-6) if config.normalize_q else 1.0
    loss = -scale * jnp.mean(q)
    info = {"actor_q": jnp.mean(q)}
    if config.variant == "gaussian":
        temp = jnp.exp(params["log_temp"])
        loss = loss + jax.lax.stop_gradient(temp) * jnp.mean(log_prob)
        target_entropy = -0.5 * state.spec.chunk_dim
        temp_loss = temp * jax.lax.stop_gradient(-jnp.mean(log_prob) - target_entropy)
        loss = loss + temp_loss
        info |= {"entropy": -jnp.mean(log_prob), "temperature": temp}
    return loss, {"actor_loss": loss, **info}


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    config, spec = state.config, state.spec
    critic, base = critic_net(config, state.spec), base_policy(config, spec)
    rng, k_next, k_base, k_prior, k_na, k_actor = jax.random.split(state.rng, 6)
    next_actions = act(state, batch["next_observations"], k_next)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, config.geometry)
    obs = batch["observations"]

    def loss_fn(params):
        critic_loss, critic_info = qc.critic_loss(critic, params["critic"], state.target_params["critic"],
                                                  batch, next_actions, config.critic, spec.horizon)
        bc_loss, bc_info = base.loss(params["base"], obs, batch["actions"], prior, k_base)
        na_loss, na_info = latent_critic_loss(state, params, obs, k_na)
        pi_loss, actor_info = actor_loss(state, params, obs, k_actor)
        total = critic_loss + config.alpha * bc_loss + na_loss + pi_loss
        return total, {**critic_info, **bc_info, **na_info, **actor_info}

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, tau=config.critic.tau).replace(rng=rng), metrics
