"""QPILOTS-U: inference-time Q-steering of a flow-matching base with the Tweedie estimate
(docs/algorithms.md#qpilots-u; QPILOTS paper Alg. 1, Eq. 15, App. C).

Time convention (flow matching): noise at τ = 0, data at τ = 1. Nothing trains the base towards
the critic: the base flow and the critic are learnt by their own objectives,

    L = L_critic(ϕ; a' from the steered sampler at s') + L_FM(θ)        (L_FM dropped when frozen)

one Adam step on both with joint global-norm clipping (1.0), Polyak targets for critic and base.
Only sampling changes (`generative.steering`): K Euler steps of the base velocity v_θ and, from
the second step on, the drift-rescaled steering term α·(‖v̂‖/(‖ĝ‖+ε))·ĝ with

    ĝ = ∇_x Q̄'(s, clip(x + (1 − τ)·v_θ'(s, x, τ)))      (clip straight-through)

where Q̄' = mean_j Q'_j − ρ·std_j Q'_j is the target ensemble (J = 10, ρ = 0.5) and v_θ' the target
base flow (paper App. C.3: more stable for the biased Tweedie estimate). `act` steers the online
base; a' for the TD target runs the same sampler with the target base's velocity (App. C.2,
"using target nets"; `next_action_base`). α = 0 is exactly the base policy's own sampler.
`steered_targets=False` (not the paper's OGBench setting) values the base policy instead, so
updates cost no steering gradients (the paper's LIBERO runs use SARSA targets for a related
reason, §5.2).

Frozen base (`steerflow train --base-from RUN_DIR`): `train_base=False`, the base parameters come
from a finished FM run, are never updated and serve as their own target.
Shapes: obs (B, obs_dim), chunks and noises (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from steerflow import critic as qc
from steerflow.agents.common import AgentState, EnvSpec, apply_gradients, create_state
from steerflow.generative import flow, latent, steering

NEXT_ACTION_BASES = ("target", "online")


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=lambda: qc.CriticConfig(**qc.CriticConfig.NAMED["qpilots"]))
    flow: flow.FlowConfig = field(default_factory=lambda: flow.FlowConfig(**flow.FlowConfig.NAMED["qpilots"]))
    alpha: float = 0.3  # steering coefficient (paper grid {0.1, 0.2, 0.3, 0.5, 1, 2}; cube-double 0.3)
    steer_eps: float = 1e-6  # ε of the drift rescale
    train_base: bool = True  # False: frozen base (--base-from), trained by nothing
    next_action_base: str = "target"  # base velocity net of the a' sampler: target | online
    steered_targets: bool = True  # False: a' is the base's own (unsteered) sample — ~10x cheaper updates
    learning_rate: float = 3e-4
    max_grad_norm: float = 1.0  # joint global-norm clipping (paper App. C.2)


# config fields that change only how a trained state acts (`steerflow eval RUN --set`); the critic of a
# trained state was fitted with targets from the training value, which its record keeps
INFERENCE_KEYS = ("alpha",)

def check_config(config: Config) -> None:
    if config.next_action_base not in NEXT_ACTION_BASES:
        raise ValueError(f"unknown next_action_base {config.next_action_base!r}; choose one of {NEXT_ACTION_BASES}")
    if config.alpha < 0:
        raise ValueError(f"alpha must be ≥ 0, got {config.alpha}")


def init_params(key: jax.Array, spec: EnvSpec, config) -> tuple[dict, dict]:
    """(params, target params) of the critic and the base; the base has a target copy only while
    it trains (a frozen base is its own target)."""
    check_config(config)
    k_critic, k_base = jax.random.split(key)
    obs, chunk = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim))
    params = {"critic": qc.make_critic(config.critic).init(k_critic, obs, chunk),
              "base": flow.make_net(config.flow, spec.chunk_dim).init(k_base, obs, chunk, jnp.ones((1,)))}
    targets = {"critic": params["critic"], **({"base": params["base"]} if config.train_base else {})}
    return params, targets


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    k_params, k_state = jax.random.split(key)
    params, targets = init_params(k_params, spec, config)
    return create_state(params, targets, k_state, config, spec)


def target_base(state: AgentState) -> dict:
    return state.target_params.get("base", state.params["base"])


def pessimistic_value(state: AgentState):
    """ψ(s, a) = Q̄'(s, a): the target ensemble's pessimistic aggregate, (M,) per row."""
    critic = qc.make_critic(state.config.critic)
    return lambda obs, chunks: qc.aggregate(critic.apply(state.target_params["critic"], obs, chunks), state.config.critic)


def steering_gradient(state: AgentState, obs: jnp.ndarray):
    """GradV(x, τ, key) of QPILOTS-U: the Tweedie estimate under the target base and critic."""
    net = flow.make_net(state.config.flow, state.spec.chunk_dim)
    base_params, psi = target_base(state), pessimistic_value(state)

    def grad(x, tau, key):
        return steering.tweedie_gradient(lambda x_, t_: net.apply(base_params, obs, x_, t_), psi, obs, x, tau)

    return grad


def steered_endpoint(state: AgentState, obs: jnp.ndarray, key: jax.Array, base_params: dict,
                     gradient_fn=steering_gradient) -> jnp.ndarray:
    """The steered Euler sample per state before the final clip, (B, d), the base velocity from
    `base_params`. The noise is drawn from `key` exactly as `base_endpoint` (and BC-FM `act`)
    draws it, so the two differ only by the steering."""
    config, spec = state.config, state.spec
    net = flow.make_net(config.flow, spec.chunk_dim)
    noise = latent.sample_prior(key, (obs.shape[0], spec.chunk_dim), "normal")
    return steering.steered_euler(lambda x_, t_: net.apply(base_params, obs, x_, t_), gradient_fn(state, obs), noise,
                                  config.flow.steps, config.alpha, jax.random.fold_in(key, 1), config.steer_eps)


def steered_sample(state: AgentState, obs: jnp.ndarray, key: jax.Array, base_params: dict,
                   gradient_fn=steering_gradient) -> jnp.ndarray:
    """clip(`steered_endpoint`): the chunk QPILOTS-U acts with, (B, d)."""
    return jnp.clip(steered_endpoint(state, obs, key, base_params, gradient_fn), -1.0, 1.0)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return steered_sample(state, obs, key, state.params["base"])


def base_endpoint(state: AgentState, obs: jnp.ndarray, key: jax.Array, base_params: dict) -> jnp.ndarray:
    """The unsteered Euler sample per state before the final clip (α = 0), (B, d)."""
    config, spec = state.config, state.spec
    noise = latent.sample_prior(key, (obs.shape[0], spec.chunk_dim), "normal")
    return flow.sample(flow.make_net(config.flow, spec.chunk_dim).apply, base_params, obs, noise, config.flow.steps)


def base_sample(state: AgentState, obs: jnp.ndarray, key: jax.Array, base_params: dict) -> jnp.ndarray:
    """clip(`base_endpoint`): the base policy's own sampler, (B, d)."""
    return jnp.clip(base_endpoint(state, obs, key, base_params), -1.0, 1.0)


def next_actions(state: AgentState, next_obs: jnp.ndarray, key: jax.Array, gradient_fn=steering_gradient):
    """a' ~ the steered policy at s_{t+H} (critic_steered_targets), without gradient; with
    `steered_targets=False` the base's own sample instead (the critic then values the base
    policy, and steering is left to acting: no gradient evaluations inside the update)."""
    config, spec = state.config, state.spec
    base_params = target_base(state) if config.next_action_base == "target" else state.params["base"]
    if not config.steered_targets:
        return jax.lax.stop_gradient(base_sample(state, next_obs, key, base_params))
    return jax.lax.stop_gradient(steered_sample(state, next_obs, key, base_params, gradient_fn))


def loss_terms(state: AgentState, batch: dict, key: jax.Array, gradient_fn=steering_gradient, extra_loss=None):
    """params ↦ ({term: loss}, metrics): L_critic, L_FM (while the base trains) and `extra_loss`
    (QPILOTS-M's MFM loss, `extra_loss(params, key)`). Each term reaches only its own network."""
    config, spec = state.config, state.spec
    critic, net = qc.make_critic(config.critic), flow.make_net(config.flow, spec.chunk_dim)
    k_next, k_fm, k_prior, k_extra = jax.random.split(key, 4)
    a_next = next_actions(state, batch["next_observations"], k_next, gradient_fn)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, "normal")

    def terms(params):
        losses, info = {}, {}
        losses["critic"], q_info = qc.critic_loss(critic, params["critic"], state.target_params["critic"], batch,
                                                  a_next, config.critic, spec.horizon)
        info.update(q_info)
        if config.train_base:
            losses["fm"], fm_info = flow.fm_loss(net.apply, params["base"], batch["observations"], batch["actions"],
                                                 prior, k_fm, batch.get("valid"))
            info.update(fm_info)
        if extra_loss is not None:
            losses["extra"], extra_info = extra_loss(params, k_extra)
            info.update(extra_info)
        return losses, info

    return terms


def update(state: AgentState, batch: dict, gradient_fn=steering_gradient, extra_loss=None) -> tuple[AgentState, dict]:
    """The sum of `loss_terms`; one (clipped) Adam step on every network, Polyak targets."""
    rng, key = jax.random.split(state.rng)
    terms = loss_terms(state, batch, key, gradient_fn, extra_loss)

    def loss_fn(params):
        losses, info = terms(params)
        return sum(losses.values()), info

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, tau=state.config.critic.tau).replace(rng=rng), metrics
