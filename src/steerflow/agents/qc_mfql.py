"""QC-MFQL (LPS paper baseline, docs/algorithms.md#qc-mfql): QC-FQL with the MeanFlow base.

The BC loss is L_MF instead of L_FM and the distillation teacher is the one-step decode
clip(π_β(s, ε, 0, 1)); everything else — one-step actor, α-weighted distillation, Q term, critic
target — is QC-FQL's, so this module only changes the defaults. MeanFlow time convention: data
at t=0, noise at t=1. The α-sensitivity study (paper §V-C) sweeps `alpha`.
"""

from __future__ import annotations

from dataclasses import dataclass

from steerflow.agents import qc_fql
from steerflow.agents.qc_fql import act, act_noise, actor_loss, init, noise_spec, update  # noqa: F401  (the agent contract)


@dataclass(frozen=True)
class Config(qc_fql.Config):
    decoder: str = "meanflow"  # teacher = one-step MeanFlow decode
    geometry: str = "normal"  # the LPS paper gives QC-MFQL's base and actor a normal prior
