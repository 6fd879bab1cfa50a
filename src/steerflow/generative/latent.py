"""Latent geometries of the base policy's noise endpoint (docs/algorithms.md#latent-geometry).

Latents are flattened chunks `(B, d)`, `d = H·A`.
- `sphere`: z = √d · ε/‖ε‖, ε ~ N(0, I_d); actor outputs are projected the same way.
- `normal`: z ~ N(0, I_d); actor outputs are used as they are.
- `truncated`: z ~ N(0, I_d) truncated to the box [−B, B]^d; actor outputs squashed B·tanh(h).
  The paper's bound did not survive text extraction; B = 2 (the box polar823's LPSD rescales its
  latents to) is our choice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GEOMETRIES = ("sphere", "normal", "truncated")
TRUNCATION = 2.0  # B of the truncated geometry


def check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown latent geometry {geometry!r}; choose one of {GEOMETRIES}")


def project_to_sphere(h: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """Rescale each row of `h` (B, d) to norm √d; eps keeps the projection finite at h = 0."""
    d = h.shape[-1]
    return jnp.sqrt(d) * h / jnp.sqrt(jnp.sum(h**2, axis=-1, keepdims=True) + eps)


def sample_prior(key: jax.Array, shape: tuple[int, ...], geometry: str) -> jnp.ndarray:
    """Draw base-policy latents from the prior of `geometry`."""
    if geometry == "truncated":
        return jax.random.truncated_normal(key, -TRUNCATION, TRUNCATION, shape)
    eps = jax.random.normal(key, shape)
    return project_to_sphere(eps) if geometry == "sphere" else eps


def constrain(h: jnp.ndarray, geometry: str) -> jnp.ndarray:
    """Map a latent actor's raw output onto the prior's support."""
    if geometry == "truncated":
        return TRUNCATION * jnp.tanh(h)
    return project_to_sphere(h) if geometry == "sphere" else h
