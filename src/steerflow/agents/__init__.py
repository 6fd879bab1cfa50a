"""Policy-extraction methods, one module per method, each an `agents.common.Agent`.

`AGENTS` maps the CLI names to the modules, imported on first use: the agent modules import
`agents.common`, and this package imports none of them, so there is no import circle.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

# CLI name -> module in this package
_MODULES = {
    "lps": "lps",
    "lpsd": "lpsd",
    "bc-mf": "bc_mf",
    "bc-fm": "bc_fm",
    "qc-fql": "qc_fql",
    "qc-mfql": "qc_mfql",
    "qc-bon": "qc_bon",
    "dsrl-na": "dsrl_na",
    "dsrl-na-sac": "dsrl_na_sac",
    "cfgrl": "cfgrl",
    "qpilots-u": "qpilots_u",
    "qpilots-m": "qpilots_m",
}


class _Registry(Mapping):
    """name -> agent module, importing a module when it is first asked for."""

    def __getitem__(self, name: str) -> ModuleType:
        return importlib.import_module(f"{__name__}.{_MODULES[name]}")

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


AGENTS: Mapping[str, ModuleType] = _Registry()


def get_agent(name: str) -> ModuleType:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}")
    return AGENTS[name]
