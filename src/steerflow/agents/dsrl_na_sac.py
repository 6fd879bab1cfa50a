"""DSRL-NA, original variant (docs/algorithms.md#dsrl-na-sac): `dsrl_na` with a tanh-Gaussian latent actor scaled by
`noise_scale`, SAC entropy with a learned temperature, and N(0, I) latents (see `dsrl_na` for
the losses; this module only changes the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from steerflow.agents import dsrl_na
from steerflow.agents.dsrl_na import act, act_noise, init, noise_spec, update  # noqa: F401  (the agent contract)


@dataclass(frozen=True)
class Config(dsrl_na.Config):
    variant: str = "gaussian"
    geometry: str = "normal"
