"""Inference-time Q-steering of a flow-matching sampler (QPILOTS, docs/algorithms.md#qpilots; QPILOTS paper Alg. 1, Eq. 17).

Time convention (flow matching): noise at τ = 0, data at τ = 1. With K Euler steps, τ_i = i/K:

    x ← x0 ~ prior;  for i = 0 … K−1:
        v̂ = v(s, x, τ_i)
        if i > 0:  ĝ = GradV(s, x, τ_i);  v̂ ← v̂ + α · (‖v̂‖ / (‖ĝ‖ + ε)) · ĝ     (per sample)
        x ← x + v̂/K
    return x            (unclipped; callers clip to [−1, 1])

Steering is skipped at τ = 0, where the endpoint posterior is the unconditional base and carries
no state-dependent signal (paper §4). The rescale matches the drift magnitude, so only ĝ's
direction matters and α is the relative step. Two estimators of ĝ ≈ ∇_x log E[exp ψ(a) | x_τ = x]:

- `tweedie_gradient` (QPILOTS-U): ∇_x ψ(clip(x + (1 − τ)·v(s, x, τ))), the clip straight-through;
- `posterior_gradient` (QPILOTS-M): ∇_x log (1/N) Σ_n exp ψ_n(X̂_{0,1}(ε_n; τ, x, s)) over N
  posterior samples of a meta flow map (`generative.meta_flow_map`).

Shapes: obs (B, obs_dim), x and velocities (B, d), τ (B,). ψ maps (obs (M, obs_dim), chunks (M, d))
to (M,) values; a state's steering depends on that state's own x only (no cross-sample gradient).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from steerflow.generative.flow import euler


def straight_through_clip(x: jnp.ndarray) -> jnp.ndarray:
    """clip(x, −1, 1) in the forward pass, identity in the backward pass."""
    return x + jax.lax.stop_gradient(jnp.clip(x, -1.0, 1.0) - x)


def steered_euler(velocity: Callable, steering_gradient: Callable, noise: jnp.ndarray, steps: int,
                  alpha: float, key: jax.Array, eps: float = 1e-6) -> jnp.ndarray:
    """x_K of the steered Euler sampler from x_0 = noise (module docstring); α = 0 gives exactly
    `flow.euler(velocity, noise, steps)`. `velocity(x, tau)` and `steering_gradient(x, tau, key)`
    take x (B, d), tau (B,) (and a fresh key per step, for sampling estimators) and return (B, d)."""
    batch = noise.shape[0]
    if isinstance(alpha, (int, float)) and alpha == 0:  # the base itself, no gradient evaluated (0·NaN is NaN)
        return euler(velocity, noise, steps)

    def times(i):
        return jnp.full((batch,), i / steps, dtype=noise.dtype)

    def step(x, i_key):
        i, k = i_key
        tau = times(i)
        v = velocity(x, tau)
        g = steering_gradient(x, tau, k)
        scale = alpha * jnp.linalg.norm(v, axis=-1, keepdims=True) / (jnp.linalg.norm(g, axis=-1, keepdims=True) + eps)
        return x + (v + scale * g) / steps, None

    x = noise + velocity(noise, times(0)) / steps  # i = 0: unsteered
    x, _ = jax.lax.scan(step, x, (jnp.arange(1, steps), jax.random.split(key, steps - 1)))
    return x


def tweedie_gradient(velocity: Callable, psi: Callable, obs: jnp.ndarray, x: jnp.ndarray,
                     tau: jnp.ndarray) -> jnp.ndarray:
    """ĝ_UG = ∇_x ψ(s, clip(x + (1 − τ)·v(s, x, τ))) (paper Eq. 15): one forward-backward through
    the velocity net and ψ. `velocity(x, tau)` is the (target) base flow at these states."""

    def total(x_):
        denoised = x_ + (1.0 - tau)[:, None] * velocity(x_, tau)
        return jnp.sum(psi(obs, straight_through_clip(denoised)))

    return jax.grad(total)(x)


def normalise_scores(q: jnp.ndarray, clip: float, tilt: float) -> jnp.ndarray:
    """τ_tilt · clip((q − mean)/std, ±clip) with the statistics of all of `q` held constant (no
    gradient through them): the bounded tilt scalar of paper §4 / App. B."""
    mean, std = jax.lax.stop_gradient(jnp.mean(q)), jax.lax.stop_gradient(jnp.std(q))
    return tilt * jnp.clip((q - mean) / (std + 1e-6), -clip, clip)


def posterior_gradient(posterior_map: Callable, psi: Callable, obs: jnp.ndarray, x: jnp.ndarray,
                       tau: jnp.ndarray, noises: jnp.ndarray, normalise: Callable | None = None,
                       batched: bool = True) -> jnp.ndarray:
    """ĝ_MFM = ∇_x log (1/N) Σ_n exp(ψ̃(s, X̂_{0,1}(ε_n; τ, x, s))) (paper Eq. 16).

    `posterior_map(obs, x, tau, eps)` is X̂_{0,1} on (M, ·) arrays; `noises` (N, B, d) are the ε_n;
    `normalise` maps the raw scores (N, B) to ψ̃ (batch normalisation and clipping; None keeps ψ).
    `batched=True` evaluates the N posterior samples in one call of batch N·B; `False` maps over
    them one call at a time (the same numbers, for the cost comparison)."""
    n = noises.shape[0]

    def total(x_):
        if batched:
            rep = lambda a: jnp.broadcast_to(a, (n, *a.shape)).reshape(n * a.shape[0], *a.shape[1:])
            samples = posterior_map(rep(obs), rep(x_), rep(tau), noises.reshape(-1, noises.shape[-1]))
            scores = psi(rep(obs), samples).reshape(n, -1)
        else:
            scores = jax.lax.map(lambda e: psi(obs, posterior_map(obs, x_, tau, e)), noises)
        if normalise is not None:
            scores = normalise(scores)
        return jnp.sum(jax.nn.logsumexp(scores, axis=0) - jnp.log(n))

    return jax.grad(total)(x)
