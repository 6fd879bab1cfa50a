"""Policy-extraction methods, one module per method, all following `agents.common`'s contract."""

from __future__ import annotations

from types import ModuleType

from steerflow.agents import (bc_fm, bc_mf, cfgrl, dsrl_na, dsrl_na_sac, lps, lpsd, qc_bon, qc_fql, qc_mfql,
                              qpilots_m, qpilots_u)

AGENTS: dict[str, ModuleType] = {
    "lps": lps,
    "lpsd": lpsd,
    "bc-mf": bc_mf,
    "bc-fm": bc_fm,
    "qc-fql": qc_fql,
    "qc-mfql": qc_mfql,
    "qc-bon": qc_bon,
    "dsrl-na": dsrl_na,
    "dsrl-na-sac": dsrl_na_sac,
    "cfgrl": cfgrl,
    "qpilots-u": qpilots_u,
    "qpilots-m": qpilots_m,
}


def get_agent(name: str) -> ModuleType:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}")
    return AGENTS[name]
