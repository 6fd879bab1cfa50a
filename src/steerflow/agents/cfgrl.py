"""CFGRL (docs/algorithms.md#cfgrl): policy improvement by classifier-free guidance of an optimality-conditioned
flow-matching base, with the Q-chunking critic in IQL form.

Value learning (no policy in the TD target, as in IQL/CFGRL):
    L_V      = E |κ − 1(Q̄ − V < 0)| · (Q̄ − V)²,   Q̄ = min_j Q̄_j(s, a),  κ = 0.9
    L_critic = mean_j (Q_j(s_t, a_t:t+H) − (R + γ^H · m · V(s_{t+H})))²
Optimality label o = 1[min_j Q_j(s, a) − V(s) ≥ 0] ∈ {0, 1}, stored as label 2 (optimal) or
1 (not), replaced by label 0 ("null") with probability 0.1; the base v_ω(s, x, τ, o) is trained
by flow matching (noise at τ=0, data at τ=1) on (s, a, o). Sampling integrates 16 Euler steps of
the guided field

    v = v_ω(s, x, τ, null) + w · (v_ω(s, x, τ, optimal) − v_ω(s, x, τ, null))

so w = 0 is the unconditional BC sampler and w = 1 the optimal-conditioned one.
Shapes: obs (B, obs_dim), chunks (B, d), labels (B,) int.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from steerflow import critic as qc
from steerflow.agents.common import AgentState, EnvSpec, apply_gradients, create_state
from steerflow.generative import flow, latent
from steerflow.nets import MLP, ConditionalField

NULL, NOT_OPTIMAL, OPTIMAL = 0, 1, 2


@dataclass(frozen=True)
class Config:
    critic: qc.CriticConfig = field(default_factory=qc.CriticConfig)  # V uses the same widths
    flow: flow.FlowConfig = field(default_factory=lambda: flow.FlowConfig(steps=16))
    embed_dim: int = 32  # learned label embedding
    expectile: float = 0.9  # κ
    guidance: float = 1.0  # w (CFGRL's config default; swept in the paper)
    label_dropout: float = 0.1
    geometry: str = "normal"
    learning_rate: float = 3e-4
    max_grad_norm: float = 0.0  # > 0: clip the joint gradient to this global norm (agents.common.make_optimizer)


class LabelledField(nn.Module):
    """v_ω(s, x, τ, o): the FM velocity net with a learned embedding of o appended to s."""

    hidden: Sequence[int]
    out_dim: int
    embed_dim: int

    @nn.compact
    def __call__(self, obs, x, tau, label):
        emb = nn.Embed(3, self.embed_dim)(label)
        return ConditionalField(self.hidden, self.out_dim)(jnp.concatenate([obs, emb], -1), x, tau)


def _nets(config: Config, spec: EnvSpec):
    value = MLP(tuple(config.critic.hidden), 1, layer_norm=True)
    return qc.make_critic(config.critic), value, LabelledField(tuple(config.flow.hidden), spec.chunk_dim,
                                                               config.embed_dim)


def init(key: jax.Array, spec: EnvSpec, config: Config) -> AgentState:
    latent.check_geometry(config.geometry)
    flow.make_net(config.flow, spec.chunk_dim)  # validates the step count
    critic, value, base = _nets(config, spec)
    k_critic, k_value, k_base, k_state = jax.random.split(key, 4)
    obs, chunk, one = jnp.zeros((1, spec.obs_dim)), jnp.zeros((1, spec.chunk_dim)), jnp.ones((1,))
    params = {"critic": critic.init(k_critic, obs, chunk), "value": value.init(k_value, obs),
              "base": base.init(k_base, obs, chunk, one, jnp.zeros((1,), jnp.int32))}
    return create_state(params, {"critic": params["critic"]}, k_state, config, spec)


def guided_sample(state: AgentState, obs: jnp.ndarray, noise: jnp.ndarray, guidance: float) -> jnp.ndarray:
    """Unclipped sample of the guided field. The two labels are two net calls per step, not one on a
    doubled batch: slicing a 2B-row batch back into halves is what ONNX export cannot do with a
    symbolic B, and at acting sizes the second call costs next to nothing."""
    _, _, base = _nets(state.config, state.spec)
    zeros = jnp.zeros_like(obs[:, 0], jnp.int32)  # built from obs: the batch stays symbolic in export
    null, optimal = zeros + NULL, zeros + OPTIMAL

    def velocity(x, tau):
        v_null = base.apply(state.params["base"], obs, x, tau, null)
        v_opt = base.apply(state.params["base"], obs, x, tau, optimal)
        return v_null + guidance * (v_opt - v_null)

    return flow.euler(velocity, noise, state.config.flow.steps)


def noise_spec(config, spec: EnvSpec):
    """(per-row noise shape, prior geometry) `act` draws; `act_noise` takes that draw explicitly."""
    return (spec.chunk_dim,), config.geometry


def act_noise(state: AgentState, obs: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(guided_sample(state, obs, noise, state.config.guidance), -1.0, 1.0)


def act(state: AgentState, obs: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    return act_noise(state, obs, latent.sample_prior(key, (obs.shape[0], state.spec.chunk_dim), state.config.geometry))


def value_losses(state: AgentState, params: dict, batch: dict) -> tuple[jnp.ndarray, dict]:
    """Expectile V against the target critic, and the critic against R + γ^H·m·V(s')."""
    config, spec = state.config, state.spec
    critic, value, _ = _nets(config, spec)
    q_target = jnp.min(critic.apply(state.target_params["critic"], batch["observations"], batch["actions"]), 0)
    v = value.apply(params["value"], batch["observations"])[:, 0]
    diff = jax.lax.stop_gradient(q_target) - v
    value_loss = jnp.mean(jnp.abs(config.expectile - (diff < 0)) * diff**2)
    next_v = value.apply(params["value"], batch["next_observations"])[:, 0]
    y = jax.lax.stop_gradient(batch["rewards"] + config.critic.discount**spec.horizon * batch["masks"] * next_v)
    critic_loss, critic_info = qc.regression_loss(critic, params["critic"], batch, y)
    return value_loss + critic_loss, {**critic_info, "value_loss": value_loss, "v_mean": jnp.mean(v)}


def optimality_labels(state: AgentState, batch: dict, key: jax.Array) -> jnp.ndarray:
    """o = 1[min_j Q_j(s, a) − V(s) ≥ 0] as OPTIMAL / NOT_OPTIMAL, dropped to NULL w.p. 0.1."""
    critic, value, _ = _nets(state.config, state.spec)
    q = jnp.min(critic.apply(state.params["critic"], batch["observations"], batch["actions"]), 0)
    v = value.apply(state.params["value"], batch["observations"])[:, 0]
    labels = jnp.where(q - v >= 0, OPTIMAL, NOT_OPTIMAL)
    dropped = jax.random.uniform(key, labels.shape) < state.config.label_dropout
    return jnp.where(dropped, NULL, labels)


def update(state: AgentState, batch: dict) -> tuple[AgentState, dict]:
    config, spec = state.config, state.spec
    _, _, base = _nets(config, spec)
    rng, k_label, k_tau, k_prior = jax.random.split(state.rng, 4)
    labels = optimality_labels(state, batch, k_label)
    prior = latent.sample_prior(k_prior, batch["actions"].shape, config.geometry)

    def loss_fn(params):
        v_loss, v_info = value_losses(state, params, batch)
        labelled = lambda p, obs, x, tau: base.apply(p, obs, x, tau, labels)
        bc_loss, bc_info = flow.fm_loss(labelled, params["base"], batch["observations"], batch["actions"],
                                        prior, k_tau)
        return v_loss + bc_loss, {**v_info, **bc_info, "optimal_fraction": jnp.mean(labels == OPTIMAL)}

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, tau=config.critic.tau).replace(rng=rng), metrics
