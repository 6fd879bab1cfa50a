"""Flow-matching base policy (docs/algorithms.md#flow-matching): the BC-FM base of QC-FQL, DSRL, CFGRL and best-of-N.

Time convention (flow matching, opposite to MeanFlow's): noise at τ = 0, data at τ = 1.
    x_τ = (1 − τ)·x0 + τ·a,   target velocity v = a − x0   (pointing noise → data)
    L_FM = E ‖v_ω(s, x_τ, τ) − (a − x0)‖²,  τ ~ U(0, 1), x0 from the prior
Sampling integrates K Euler steps x ← x + v(s, x, i/K)/K from x0 and clips to [−1, 1] at the
end; `euler` leaves the clip to the caller so the map stays differentiable (FM-LPS back-propagates
through all K steps).

Shapes: obs (B, obs_dim), chunks and noises (B, d), times (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp

from steerflow.dit import DiTConfig, DiTField
from steerflow.dit import check as check_arch
from steerflow.nets import ConditionalField, check_activation


@dataclass(frozen=True)
class FlowConfig:
    hidden: Sequence[int] = (512, 512, 512, 512)
    steps: int = 10  # Euler steps K used to sample (and to decode in FM-LPS / DSRL)
    activation: str = "gelu"  # gelu | silu (QPILOTS)
    time_features: int = 0  # 0: τ as a raw feature; > 0: a Fourier embedding of that size (QPILOTS: 64)
    arch: str = "mlp"  # mlp (`hidden`) | dit (`dit`; `hidden` then sizes its conditioning MLP)
    dit: DiTConfig = field(default_factory=DiTConfig)

    # `--set flow=qpilots`: the QPILOTS paper's velocity net (App. C.1), keeping the net's size
    NAMED: ClassVar[dict] = {"qpilots": dict(activation="silu", time_features=64)}


def make_net(config: FlowConfig, action_dim: int) -> ConditionalField:
    """v_ω(s, x, τ): an MLP over [s, x, τ] (no LayerNorm)."""
    if config.steps < 1:
        raise ValueError(f"flow steps must be ≥ 1, got {config.steps}")
    check_activation(config.activation)
    check_arch(config.arch, config.dit, action_dim)
    if config.arch == "dit":
        return DiTField(action_dim, tuple(config.hidden), config.dit)
    return ConditionalField(hidden=tuple(config.hidden), out_dim=action_dim, activation=config.activation,
                            time_features=config.time_features)


def fm_loss(apply_fn: Callable, params, obs: jnp.ndarray, actions: jnp.ndarray, noise: jnp.ndarray,
            key: jax.Array, valid: jnp.ndarray | None = None) -> tuple[jnp.ndarray, dict]:
    """L_FM, averaged over batch and chunk elements (the scale FQL's α was tuned against)."""
    tau = jax.random.uniform(key, (actions.shape[0],))
    x_tau = (1.0 - tau[:, None]) * noise + tau[:, None] * actions
    sq_err = jnp.mean((apply_fn(params, obs, x_tau, tau) - (actions - noise)) ** 2, axis=-1)
    if valid is not None:
        sq_err = sq_err * valid
    loss = jnp.mean(sq_err)
    return loss, {"fm_loss": loss}


def euler(velocity: Callable, noise: jnp.ndarray, steps: int) -> jnp.ndarray:
    """x_K from x_0 = noise with x ← x + velocity(x, τ_i)/K, τ_i = i/K; unclipped, differentiable.

    `velocity(x, tau)` takes x (B, d) and tau (B,); guided samplers (CFGRL) pass their own."""
    def step(x, i):
        # τ built from x, not from its static batch size: exports keep the batch dimension symbolic
        tau = jnp.zeros_like(x[:, 0]) + (i / steps).astype(x.dtype)
        return x + velocity(x, tau) / steps, None

    x, _ = jax.lax.scan(step, noise, jnp.arange(steps))
    return x


def sample(apply_fn: Callable, params, obs: jnp.ndarray, noise: jnp.ndarray, steps: int) -> jnp.ndarray:
    """The base policy's unclipped K-step sample from the given noise."""
    return euler(lambda x, tau: apply_fn(params, obs, x, tau), noise, steps)
