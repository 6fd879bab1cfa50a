"""QPILOTS-M: inference-time Q-steering of a flow-matching base with a meta flow map posterior
(docs/algorithms.md#qpilots-m; QPILOTS paper Eq. 16, App. C).

Time convention (flow matching): noise at τ = 0, data at τ = 1. QPILOTS-U's agent (`qpilots_u`:
critic, base, steered Euler sampler, training loop) with a different steering gradient and one
more network, the meta flow map X̂ (`generative.meta_flow_map`), trained next to them:

    L = L_critic + L_FM + λ_diag·L_diag + λ_cons·L_cons          (λ_diag = 1, λ_cons = 0.5)

    ĝ = ∇_x log (1/N) Σ_n exp(ψ̃_n),   ψ̃_n = τ_tilt · clip((Q̄'(s, X̂_{0,1}(ε_n; τ, x, s)) − μ)/σ, ±c)

with N = 8 posterior samples ε_n ~ N(0, I) per state and Euler step, the online MFM and the target
critic (paper App. C.3). The normalisation statistics μ, σ are those of the whole (N × B) score
batch, held constant (no gradient through them): the paper batch-normalises Q̄ "across the
minibatch" and clips to "a fixed range" it does not give (`q_clip`, default 5). A single state
(batch 1, acting in one environment) is normalised over its own N samples. The MFM samples go to
the critic unclipped, as Eq. 16 writes them (`clip_posterior` clips straight-through as QPILOTS-U
does). The MFM loss's gradient reaches only the MFM (though the joint norm clipping scales every
network's step by the same factor); the steering reaches no parameter at all.
Shapes: obs (B, obs_dim), chunks (B, d), posterior noises (N, B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from steerflow.agents import qpilots_u
from steerflow.agents.common import AgentState, EnvSpec, create_state
from steerflow.generative import meta_flow_map as mfm
from steerflow.generative import steering


@dataclass(frozen=True)
class Config(qpilots_u.Config):
    mfm: mfm.MetaFlowMapConfig = field(default_factory=mfm.MetaFlowMapConfig)
    num_posterior_samples: int = 8  # N
    q_clip: float = 5.0  # ψ̃ ∈ [−q_clip, q_clip] before the tilt (the paper's range is not stated)
    tilt: float = 1.0  # τ_tilt
    normalise_q: bool = True
    clip_posterior: bool = False
    batch_posterior: bool = True  # the N samples in one network call (False: one call each)


INFERENCE_KEYS = qpilots_u.INFERENCE_KEYS + ("num_posterior_samples", "tilt")  # `steerflow eval RUN --set`


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    if config.num_posterior_samples < 1:
        raise ValueError(f"num_posterior_samples must be ≥ 1, got {config.num_posterior_samples}")
    k_params, k_mfm, k_state = jax.random.split(key, 3)
    params, targets = qpilots_u.init_params(k_params, spec, config)
    params["mfm"] = mfm.init(mfm.make_net(config.mfm, spec.chunk_dim), k_mfm, spec.obs_dim, spec.chunk_dim)
    return create_state(params, {**targets, "mfm": params["mfm"]}, k_state, config, spec)


def steering_gradient(state: AgentState, obs: jnp.ndarray):
    """GradV(x, τ, key) of QPILOTS-M: MFM-G under the online MFM and the target critic."""
    config, spec = state.config, state.spec
    net, mfm_params = mfm.make_net(config.mfm, spec.chunk_dim), state.params["mfm"]
    value = qpilots_u.pessimistic_value(state)
    psi = (lambda o, a: value(o, steering.straight_through_clip(a))) if config.clip_posterior else value
    normalise = ((lambda q: steering.normalise_scores(q, config.q_clip, config.tilt)) if config.normalise_q
                 else (lambda q: config.tilt * q))

    def posterior_map(o, x, tau, eps):
        return mfm.posterior_sample(net, mfm_params, o, x, tau, eps)

    def grad(x, tau, key):
        noises = jax.random.normal(key, (config.num_posterior_samples, *x.shape))
        return steering.posterior_gradient(posterior_map, psi, obs, x, tau, noises, normalise,
                                           batched=config.batch_posterior)

    return grad


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return qpilots_u.steered_sample(state, obs, key, state.params["base"], steering_gradient)


def mfm_loss(state: AgentState, batch: dict):
    """(params, key) ↦ λ_diag·L_diag + λ_cons·L_cons on the batch's (s, a) pairs."""
    net = mfm.make_net(state.config.mfm, state.spec.chunk_dim)
    return lambda params, key: mfm.mfm_loss(net, params["mfm"], state.target_params["mfm"], batch["observations"],
                                            batch["actions"], key, state.config.mfm)


def loss_terms(state: AgentState, batch: dict, key: jax.Array):
    return qpilots_u.loss_terms(state, batch, key, steering_gradient, mfm_loss(state, batch))


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    return qpilots_u.update(state, batch, steering_gradient, mfm_loss(state, batch))
