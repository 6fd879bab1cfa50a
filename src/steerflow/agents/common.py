"""The agent contract shared by every method, and the building blocks the agents share.

Every module in `steerflow.agents` is an `Agent` (the required members); the ones whose `act` is
a deterministic function of the observation and an explicit noise draw are also
`ExplicitNoiseAgent`s, which is what loading a policy for deployment and export need
(`steerflow.policy`). An agent may also name the config fields that change only how a trained
state acts, `INFERENCE_KEYS` (a tuple of field names; none when absent), which
`steerflow eval RUN --set` may change on a checkpoint (`train.evaluation.inference_config`). `AgentState` carries its (static) config and spec, so `update` and `act`
need nothing else and can be `vmap`ped over seeds and `lax.scan`ned over steps. Shapes: `obs`
(B, obs_dim); chunks (B, d) with d = H·A, the H actions of a chunk flattened in time order
(docs/algorithms.md#time-conventions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
import optax


@dataclass(frozen=True)
class EnvSpec:
    obs_dim: int
    action_dim: int  # per-step action dimension A
    horizon: int  # chunk length H
    # image observations: the packed row's layout (`encoders.ObsLayout`; obs_dim = its packed_dim)
    obs_layout: Any = None

    @property
    def chunk_dim(self) -> int:
        return self.horizon * self.action_dim


@flax.struct.dataclass
class AgentState:
    params: dict  # trained parameters, one entry per network
    target_params: dict  # Polyak copies (empty when unused)
    opt_state: Any
    rng: jax.Array
    step: jax.Array
    config: Any = flax.struct.field(pytree_node=False)
    spec: EnvSpec = flax.struct.field(pytree_node=False)


@runtime_checkable
class Agent(Protocol):
    """What every agent module provides (all pure and jittable but `Config`)."""

    Config: type  # a frozen dataclass with documented defaults; `--set` overrides its fields

    def init(self, key: jax.Array, spec: EnvSpec, config: Any) -> AgentState:
        """The state of one seed: every network, its targets and optimiser state."""

    def update(self, state: AgentState, batch: dict) -> tuple[AgentState, dict]:
        """One gradient step on a batch of chunk transitions (`data.chunks.sample_chunks`): the new
        state and scalar metrics (losses, Q values)."""

    def act(self, state: AgentState, obs: jax.Array, key: jax.Array) -> jax.Array:
        """(B, d) action chunks in [-1, 1] for (B, obs_dim) observations."""


@runtime_checkable
class ExplicitNoiseAgent(Agent, Protocol):
    """An agent whose acting noise can be drawn outside it: a policy `steerflow.policy.load` and
    `steerflow export` can serve. (QPILOTS draws fresh noise at every Euler step: not one.)"""

    def noise_spec(self, config: Any, spec: EnvSpec) -> tuple[tuple[int, ...], str] | None:
        """(per-row noise shape, its prior's geometry) that `act` draws; None when `act` is deterministic."""

    def act_noise(self, state: AgentState, obs: jax.Array, noise: jax.Array | None = None) -> jax.Array:
        """`act` with the noise given: (B, d) chunks, a deterministic function of (state, obs, noise)."""


def base_policy(config, spec: EnvSpec):
    """The generative base of an agent whose Config has `decoder`, `base` (MeanFlow) and `flow` (FM);
    with image observations its network reads them through the encoder (`encoders.encoded`)."""
    import dataclasses

    from steerflow.encoders import encoded
    from steerflow.generative.base import make_base

    base = make_base(config.decoder, config.base, config.flow, spec.chunk_dim)
    return base if spec.obs_layout is None else dataclasses.replace(base, net=encoded(base.net, config, spec))


def critic_net(config, spec: EnvSpec):
    """The Q-chunking critic ensemble of `config.critic`, behind the encoder with image observations."""
    from steerflow.critic import make_critic
    from steerflow.encoders import encoded

    return encoded(make_critic(config.critic), config, spec)


def obs_net(net, config, spec: EnvSpec):
    """A network whose first input is the observation (an actor), behind the encoder with images."""
    from steerflow.encoders import encoded

    return encoded(net, config, spec)


def init_critic_base_actor(key: jax.Array, spec: EnvSpec, config, actor, actor_input: jax.Array) -> AgentState:
    """State of an agent made of a Q-chunking critic (with a target copy), a generative base and
    an actor network `actor` initialised on `actor_input` (LPS, LPSD, QC-FQL/MFQL)."""
    k_critic, k_base, k_actor, k_state = jax.random.split(key, 4)
    obs, chunk = jax.numpy.zeros((1, spec.obs_dim)), jax.numpy.zeros((1, spec.chunk_dim))
    params = {
        "critic": critic_net(config, spec).init(k_critic, obs, chunk),
        "base": base_policy(config, spec).init(k_base, spec.obs_dim, spec.chunk_dim),
        "actor": actor.init(k_actor, actor_input),
    }
    return create_state(params, {"critic": params["critic"]}, k_state, config, spec)


def joint_update(state: AgentState, batch: dict, next_actions, prior, key: jax.Array, rng: jax.Array,
                 actor_loss, bc_weight: float = 1.0) -> tuple[AgentState, dict]:
    """One step of the single-stage objective L_critic(θ) + w·L_BC(base) + L_actor shared by LPS,
    LPSD and QC-FQL/MFQL. `actor_loss(params) -> (loss, info)` must itself keep the critic and
    base frozen; `next_actions` (a', no gradient) and `prior` (the base's latents) come from the
    caller, `key` drives the base loss's own sampling, `rng` is the state's next key."""
    from steerflow.critic import critic_loss

    config, spec = state.config, state.spec
    critic, base = critic_net(config, spec), base_policy(config, spec)

    def loss_fn(params):
        q_loss, q_info = critic_loss(critic, params["critic"], state.target_params["critic"], batch, next_actions,
                                     config.critic, spec.horizon)
        bc_loss, bc_info = base.loss(params["base"], batch["observations"], batch["actions"], prior, key)
        pi_loss, pi_info = actor_loss(params)
        return q_loss + bc_weight * bc_loss + pi_loss, {**q_info, **bc_info, **pi_info}

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, tau=config.critic.tau).replace(rng=rng), metrics


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam on every trained network; with `config.max_grad_norm > 0` the gradients of all of
    them are first clipped jointly to that global norm (QPILOTS: 1.0; off by default, so results
    without it do not move)."""
    adam = optax.adam(config.learning_rate)
    max_norm = getattr(config, "max_grad_norm", 0.0)
    return optax.chain(optax.clip_by_global_norm(max_norm), adam) if max_norm > 0 else adam


def create_state(params: dict, target_params: dict, rng: jax.Array, config, spec: EnvSpec) -> AgentState:
    from steerflow import encoders

    if encoders.sharing(config, spec):  # one encoder: every network's copy starts equal
        params, target_params = encoders.tie(params, target_params)
    opt_state = make_optimizer(config).init(params)
    return AgentState(params, target_params, opt_state, rng, jax.numpy.zeros((), jax.numpy.int32), config, spec)


def apply_gradients(state: AgentState, grads: dict, tau: float | None = None) -> AgentState:
    """One Adam step on every trained network (each loss term only reaches its own nets), then,
    with `tau`, a Polyak step of every target copy towards its online network."""
    from steerflow import encoders

    if encoders.sharing(state.config, state.spec):  # the shared encoder's gradient: the sum over its copies
        grads = encoders.tie_gradients(grads)
    tx = make_optimizer(state.config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target_params = state.target_params
    if tau is not None:
        target_params = {name: optax.incremental_update(params[name], target, tau)
                         for name, target in target_params.items()}
    return state.replace(params=params, target_params=target_params, opt_state=opt_state, step=state.step + 1)
