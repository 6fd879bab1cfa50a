"""Meta flow map (MFM) of QPILOTS-M (docs/algorithms.md#qpilots-m; QPILOTS paper §3 Eqs. 8-10, App. C.1-C.2).

Two clocks. The outer flow time τ is the base policy's (FM convention: noise at 0, data at 1),
x = I_τ = (1 − τ)·I_0 + τ·a. The MFM's own times u ≤ w ∈ [0, 1] run an auxiliary flow, for each
context (τ, x, s), from fresh noise x̄_0 ~ N(0, I) at u = 0 to the endpoint posterior p(a | x_τ = x, s)
at w = 1:

    X̂_{u,w}(x̄; τ, x, s) = x̄ + (w − u)·v̂_{u,w}(x̄; τ, x, s)           (Eq. 8; residual form)
    posterior sample:   X̂_{0,1}(ε; τ, x, s) = ε + v̂_{0,1}(ε; τ, x, s)   (one network evaluation)

Training, on coupled interpolants sharing the data endpoint a (I_0, Ī_0 independent noises):

    L_diag = E ‖v̂_{u,u}(Ī_u; τ, I_τ, s) − (a − Ī_0)‖²,   Ī_u = (1 − u)·Ī_0 + u·a     (Eq. 9)
    L_cons = E ‖X̂_{u,w}(Ī_u) − sg(X̂'_{m,w}(X̂'_{u,m}(Ī_u)))‖²,  u < m < w        (Eq. 10)

with the composed map under the target parameters (′), τ = u'² (u' ~ U(0, 1): more supervision at
small τ, where the posterior is broad), (u, w) two sorted uniforms and m = u + γ·(w − u),
γ ~ U(0, 1), and each loss under the adaptive weight sg(1/(e + c)^p) (p_diag = 0.5, p_cons = 1,
c = 0.01). Readings the paper leaves open, each a field: the consistency loss starts from the same
kind of interpolant Ī_u as the diagonal loss (the text names x̄ only); both losses share one τ
and I_τ per sample; the error e is the squared norm summed over the chunk (`error_reduce`).

Network: an MLP over [s, I_τ, x̄, FF(τ), FF(u), FF(w)] (three Fourier embeddings; SiLU; no LayerNorm).
Shapes: obs (B, obs_dim), x, x̄, a (B, d), times (B,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp

from steerflow.nets import ConditionalField, check_activation


@dataclass(frozen=True)
class MetaFlowMapConfig:
    hidden: Sequence[int] = (512, 512, 512, 512)
    activation: str = "silu"
    time_features: int = 64
    diag_weight: float = 1.0  # λ_diag
    cons_weight: float = 0.5  # λ_cons
    p_diag: float = 0.5
    p_cons: float = 1.0
    weight_c: float = 0.01
    outer_time_power: float = 2.0  # τ = u'^power
    error_reduce: str = "sum"  # sum | mean over the chunk's entries


def make_net(config: MetaFlowMapConfig, chunk_dim: int) -> ConditionalField:
    """v̂(x̄; τ, x, s, u, w) as a conditional field over ([s, x], x̄, τ, u, w)."""
    check_activation(config.activation)
    if config.error_reduce not in ("sum", "mean"):
        raise ValueError(f"unknown MFM error_reduce {config.error_reduce!r}; choose sum or mean")
    return ConditionalField(tuple(config.hidden), chunk_dim, activation=config.activation,
                            time_features=config.time_features)


def init(net: ConditionalField, key: jax.Array, obs_dim: int, chunk_dim: int):
    obs, chunk, one = jnp.zeros((1, obs_dim)), jnp.zeros((1, chunk_dim)), jnp.ones((1,))
    return net.init(key, jnp.concatenate([obs, chunk], -1), chunk, one, one, one)


def flow_map(net, params, obs, x, tau, x_bar, u, w) -> jnp.ndarray:
    """X̂_{u,w}(x̄; τ, x, s) = x̄ + (w − u)·v̂_{u,w}(x̄; τ, x, s)."""
    v = net.apply(params, jnp.concatenate([obs, x], -1), x_bar, tau, u, w)
    return x_bar + (w - u)[:, None] * v


def posterior_sample(net, params, obs, x, tau, noise) -> jnp.ndarray:
    """X̂_{0,1}(ε; τ, x, s): one approximate sample of p(a | x_τ = x, s) per row."""
    zeros, ones = jnp.zeros_like(tau), jnp.ones_like(tau)
    return flow_map(net, params, obs, x, tau, noise, zeros, ones)


def _weighted(sq_err: jnp.ndarray, p: float, c: float) -> jnp.ndarray:
    return jnp.mean(jax.lax.stop_gradient(1.0 / (sq_err + c) ** p) * sq_err)


def mfm_loss(net, params, target_params, obs, actions, key, config: MetaFlowMapConfig) -> tuple[jnp.ndarray, dict]:
    """λ_diag·L_diag + λ_cons·L_cons for a batch of (s, a) pairs (module docstring)."""
    batch = actions.shape[0]
    k_outer, k_time, k_inner, k_diag_u, k_cons, k_gamma = jax.random.split(key, 6)
    reduce = (lambda e: jnp.sum(e, -1)) if config.error_reduce == "sum" else (lambda e: jnp.mean(e, -1))

    tau = jax.random.uniform(k_time, (batch,)) ** config.outer_time_power
    x_tau = (1.0 - tau[:, None]) * jax.random.normal(k_outer, actions.shape) + tau[:, None] * actions
    inner_noise = jax.random.normal(k_inner, actions.shape)

    def interpolant(u):
        return (1.0 - u[:, None]) * inner_noise + u[:, None] * actions

    u = jax.random.uniform(k_diag_u, (batch,))
    velocity = net.apply(params, jnp.concatenate([obs, x_tau], -1), interpolant(u), tau, u, u)
    diag_err = reduce((velocity - (actions - inner_noise)) ** 2)

    u_w = jnp.sort(jax.random.uniform(k_cons, (2, batch)), axis=0)
    u, w = u_w[0], u_w[1]
    m = u + jax.random.uniform(k_gamma, (batch,)) * (w - u)
    start = interpolant(u)
    direct = flow_map(net, params, obs, x_tau, tau, start, u, w)
    middle = flow_map(net, target_params, obs, x_tau, tau, start, u, m)
    composed = jax.lax.stop_gradient(flow_map(net, target_params, obs, x_tau, tau, middle, m, w))
    cons_err = reduce((direct - composed) ** 2)

    diag = _weighted(diag_err, config.p_diag, config.weight_c)
    cons = _weighted(cons_err, config.p_cons, config.weight_c)
    return config.diag_weight * diag + config.cons_weight * cons, {
        "mfm_diag_loss": diag, "mfm_cons_loss": cons, "mfm_diag_sq_err": jnp.mean(diag_err),
        "mfm_cons_sq_err": jnp.mean(cons_err)}
