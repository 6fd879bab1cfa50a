"""Policy-extraction methods, one module per method, all following `agents.common`'s contract."""

from __future__ import annotations

from types import ModuleType

from steerflow.agents import bc_mf, lps

AGENTS: dict[str, ModuleType] = {"lps": lps, "bc-mf": bc_mf}


def get_agent(name: str) -> ModuleType:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}")
    return AGENTS[name]
