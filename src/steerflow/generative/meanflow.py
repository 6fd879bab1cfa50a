"""MeanFlow base policy in the noise-to-action form (docs/algorithms.md#meanflow).

Time convention (MeanFlow): data at t = 0, noise at t = 1.
    z_t = (1 − t)·a + t·z,   v = z − a   (instantaneous velocity, pointing data → noise).
The network π_β(s, z_t, r, t) outputs an action chunk; the average velocity it implies over
[r, t] is u = z_t − π_β. The MeanFlow identity u = v − (t − r)·du/dt gives the target

    (π, dπ/dt) = jvp((z, r, t) ↦ π_β(s, z, r, t), (z_t, r, t), (v, 0, 1))
    π_tgt      = sg(z_t − v + (t − r)·(v − dπ/dt))

and the one-step decode is a = clip(π_β(s, z, r=0, t=1), −1, 1): one network evaluation.

`displacement` parameterisation (ablation): the net predicts u itself, π := z_t − u.

Shapes: obs (B, obs_dim), chunks and latents (B, d), times (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from steerflow.dit import DiTConfig, DiTField
from steerflow.dit import check as check_arch
from steerflow.nets import ConditionalField

RT_SAMPLERS = ("logit_normal", "zero_r")


@dataclass(frozen=True)
class MeanFlowConfig:
    hidden: Sequence[int] = (512, 512, 512, 512)
    # (r, t) sampler: "logit_normal" = MeanFlow's LN(−0.4, 1) pair sorted t ≥ r, r := t for a
    # fraction `equal_fraction`; "zero_r" = r = 0, t ~ U(0, 1) (MeanFlowQL).
    rt_sampler: str = "logit_normal"
    logit_mean: float = -0.4
    logit_std: float = 1.0
    equal_fraction: float = 0.75
    # Adaptive weight w = sg(1 / (e + c)^p) on the loss w·e, with e = ‖π − π_tgt‖² summed over the
    # chunk's entries (`error_reduce="sum"`) or averaged (`"mean"`: the authors' LPS code, with
    # p = 0.5, c = 1e-3). p = 1 makes the loss ≈ 1 whatever the error (a log-like objective).
    weight_p: float = 1.0
    weight_c: float = 0.01
    error_reduce: str = "sum"  # sum | mean
    parameterisation: str = "action"  # "action" (noise-to-action) | "displacement"
    arch: str = "mlp"  # mlp (`hidden`) | dit (`dit`; `hidden` then sizes its conditioning MLP)
    dit: DiTConfig = field(default_factory=DiTConfig)


class MeanFlowNet(nn.Module):
    """π_β(s, z, r, t) → chunk, conditioned on (t, t − r) as in MeanFlow.

    With `displacement=True` the inner net predicts the average velocity u instead and
    π = z − u, so both parameterisations share the loss and the decode.
    """

    hidden: Sequence[int]
    out_dim: int
    displacement: bool = False
    arch: str = "mlp"
    dit: DiTConfig = DiTConfig()

    @nn.compact
    def __call__(self, obs, z, r, t):
        field_net = (DiTField(self.out_dim, self.hidden, self.dit) if self.arch == "dit"
                     else ConditionalField(self.hidden, self.out_dim))
        out = field_net(obs, z, t, t - r)
        return z - out if self.displacement else out


def make_net(config: MeanFlowConfig, action_dim: int) -> MeanFlowNet:
    if config.parameterisation not in ("action", "displacement"):
        raise ValueError(f"unknown MeanFlow parameterisation {config.parameterisation!r}")
    if config.error_reduce not in ("sum", "mean"):
        raise ValueError(f"unknown MeanFlow error_reduce {config.error_reduce!r}; choose sum or mean")
    if config.rt_sampler not in RT_SAMPLERS:
        raise ValueError(f"unknown rt_sampler {config.rt_sampler!r}; choose one of {RT_SAMPLERS}")
    check_arch(config.arch, config.dit, action_dim)
    return MeanFlowNet(
        hidden=tuple(config.hidden),
        out_dim=action_dim,
        displacement=config.parameterisation == "displacement",
        arch=config.arch,
        dit=config.dit,
    )


def sample_rt(key: jax.Array, batch: int, config: MeanFlowConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Sample (r, t) with 0 ≤ r ≤ t ≤ 1, each of shape (B,)."""
    k1, k2 = jax.random.split(key)
    if config.rt_sampler == "zero_r":
        return jnp.zeros((batch,)), jax.random.uniform(k1, (batch,))
    logits = config.logit_mean + config.logit_std * jax.random.normal(k1, (2, batch))
    times = jax.nn.sigmoid(logits)
    t, r = jnp.max(times, 0), jnp.min(times, 0)
    r = jnp.where(jax.random.uniform(k2, (batch,)) < config.equal_fraction, t, r)
    return r, t


def meanflow_loss(
    apply_fn: Callable,
    params,
    obs: jnp.ndarray,
    actions: jnp.ndarray,
    latents: jnp.ndarray,
    key: jax.Array,
    config: MeanFlowConfig,
) -> tuple[jnp.ndarray, dict]:
    """L_MF for a batch of (s, a) pairs with prior latents z (docs/algorithms.md#meanflow)."""
    r, t = sample_rt(key, actions.shape[0], config)
    tc, rc = t[:, None], r[:, None]
    z_t = (1.0 - tc) * actions + tc * latents
    v = latents - actions

    def pi(z, r_, t_):
        return apply_fn(params, obs, z, r_, t_)

    pi_val, dpi_dt = jax.jvp(pi, (z_t, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    target = jax.lax.stop_gradient(z_t - v + (tc - rc) * (v - dpi_dt))
    sq_err = jnp.sum((pi_val - target) ** 2, axis=-1)
    if config.error_reduce == "mean":
        sq_err = sq_err / actions.shape[-1]
    weight = jax.lax.stop_gradient(1.0 / (sq_err + config.weight_c) ** config.weight_p)
    loss = jnp.mean(weight * sq_err)
    return loss, {"mf_loss": loss, "mf_sq_err": jnp.mean(sq_err)}


def decode(apply_fn: Callable, params, obs: jnp.ndarray, latents: jnp.ndarray) -> jnp.ndarray:
    """One-step decode (r=0, t=1) without clipping: the differentiable map used by LPS."""
    batch = latents.shape[0]
    return apply_fn(params, obs, latents, jnp.zeros((batch,)), jnp.ones((batch,)))
