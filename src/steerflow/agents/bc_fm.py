"""BC-FM: the flow-matching base policy alone (docs/algorithms.md#flow-matching, docs/algorithms.md#bc), no critic.

Time convention (flow matching): noise at τ=0, data at τ=1; act integrates K=10 Euler steps from
a fresh N(0, I) sample and clips. Identical to BC-MF except for the decoder, so it reuses that
module's init/update/act. Shapes: obs (B, obs_dim), chunks (B, d).
"""

from __future__ import annotations

from dataclasses import dataclass

from steerflow.agents import bc_mf
from steerflow.agents.bc_mf import act, act_noise, init, noise_spec, update  # noqa: F401  (the agent contract)


@dataclass(frozen=True)
class Config(bc_mf.Config):
    decoder: str = "fm-bptt"  # K-step Euler sampling (no gradient flows through it in BC)
    geometry: str = "normal"
