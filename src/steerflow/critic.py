"""Q-chunking value learning shared by every method (docs/algorithms.md#q-chunking-critic).

A critic Q_j(s, a) scores a whole flattened chunk a = a_{t:t+H} (shape (B, d)). Batches come
from the valid-start chunk sampler (docs/algorithms.md#chunk-sampler):
    observations (B, obs_dim) = s_t,  actions (B, d),  rewards (B,) = R = Σ_{k<H} γ^k r_{t+k},
    masks (B,) = m = min_k mask_{t+k},  next_observations (B, obs_dim) = s_{t+H},
    optional valid (B,) for replay buffers that hold partial trajectories.

    y = R + γ^H · m · agg_j Q̄_j(s_{t+H}, a'),   L = mean_{j,B} valid · (Q_j(s_t, a) − y)²
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp

from steerflow.nets import CriticEnsemble, check_activation

AGGREGATES = ("mean", "min", "pessimistic")


@dataclass(frozen=True)
class CriticConfig:
    hidden: Sequence[int] = (512, 512, 512, 512)
    num_critics: int = 2
    aggregate: str = "mean"  # mean (QC) | min | pessimistic = mean − rho·std (QPILOTS)
    rho: float = 0.5
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critic, applied after every update
    activation: str = "gelu"  # gelu | silu (QPILOTS)

    # `--set critic=qpilots`: the QPILOTS/QAM critic (paper App. C.1), keeping the net's size
    NAMED: ClassVar[dict] = {"qpilots": dict(num_critics=10, aggregate="pessimistic", rho=0.5, activation="silu")}


def make_critic(config: CriticConfig) -> CriticEnsemble:
    if config.aggregate not in AGGREGATES:
        raise ValueError(f"unknown critic aggregate {config.aggregate!r}; choose one of {AGGREGATES}")
    check_activation(config.activation)
    return CriticEnsemble(hidden=tuple(config.hidden), num_critics=config.num_critics, activation=config.activation)


def aggregate(q: jnp.ndarray, config: CriticConfig) -> jnp.ndarray:
    """Reduce ensemble values (J, B) to (B,)."""
    if config.aggregate == "min":
        return jnp.min(q, axis=0)
    if config.aggregate == "pessimistic":
        # jnp.std's value, with the std term's gradient 0 where the critics agree exactly (jnp.std's
        # is 0·∞ = NaN there, which a steering or actor gradient through ψ turns into a NaN chunk)
        var = jnp.var(q, axis=0)
        std = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)
        return jnp.mean(q, axis=0) - config.rho * std
    return jnp.mean(q, axis=0)


def td_target(critic, target_params, batch: dict, next_actions: jnp.ndarray, config: CriticConfig,
              horizon: int) -> jnp.ndarray:
    """y = R + γ^H · m · agg_j Q̄_j(s_{t+H}, a'), with no gradient."""
    next_q = aggregate(critic.apply(target_params, batch["next_observations"], next_actions), config)
    y = batch["rewards"] + config.discount**horizon * batch["masks"] * next_q
    return jax.lax.stop_gradient(y)


def critic_loss(critic, params, target_params, batch: dict, next_actions: jnp.ndarray,
                config: CriticConfig, horizon: int) -> tuple[jnp.ndarray, dict]:
    y = td_target(critic, target_params, batch, next_actions, config, horizon)
    return regression_loss(critic, params, batch, y)


def regression_loss(critic, params, batch: dict, y: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """L = mean_{j,B} valid · (Q_j(s_t, a_t:t+H) − y)² for a given (gradient-free) target y (B,)."""
    q = critic.apply(params, batch["observations"], batch["actions"])  # (J, B)
    valid = batch.get("valid", jnp.ones_like(y))
    loss = jnp.mean(valid * (q - y) ** 2)
    return loss, {"critic_loss": loss, "q_mean": jnp.mean(q), "target_mean": jnp.mean(y)}
