"""Config overrides: `key=value` strings applied to nested frozen dataclasses.

Keys are dotted paths (`critic.num_critics=10`); a leading `*.` sets the field at every depth
where it exists (`*.hidden=256,256` sizes every network at once). Values are parsed to the type
of the field they replace, so a typo or a wrong type fails with the key named. A nested config
may name bundles of its fields (`NAMED`, e.g. `critic=qpilots`): setting the nested config to
such a name sets exactly those fields and leaves the others (the net sizes of a preset) alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _parse(raw: Any, current: Any, key: str) -> Any:
    if dataclasses.is_dataclass(current):
        named = getattr(current, "NAMED", {})
        if not isinstance(raw, str) or raw not in named:
            raise ValueError(f"config override {key}={raw!r}: {type(current).__name__} names "
                             f"{sorted(named) or 'no configurations'}; set its fields as {key}.FIELD=VALUE")
        return dataclasses.replace(current, **named[raw])
    if isinstance(raw, list):  # from JSON; configs must stay hashable (they are static under jit)
        return tuple(raw)
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, (tuple, list)):
            return tuple(int(x) for x in raw.split(",") if x)
    except ValueError:
        raise ValueError(f"config override {key}={raw!r}: expected a value like {current!r}") from None
    return raw


def _set_everywhere(config: Any, name: str, value: Any) -> tuple[Any, int]:
    changes, hits = {}, 0
    for f in dataclasses.fields(config):
        current = getattr(config, f.name)
        if f.name == name:
            changes[f.name], hits = _parse(value, current, "*." + name), hits + 1
        elif dataclasses.is_dataclass(current):
            sub, n = _set_everywhere(current, name, value)
            if n:
                changes[f.name], hits = sub, hits + n
    return dataclasses.replace(config, **changes), hits


def _set_path(config: Any, path: list[str], value: Any, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(config)}
    if path[0] not in names:
        raise ValueError(f"config override {key!r}: {type(config).__module__}.{type(config).__name__} "
                         f"has no field {path[0]!r} (fields: {sorted(names)})")
    current = getattr(config, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config override {key!r}: {path[0]!r} is not a nested config")
        return dataclasses.replace(config, **{path[0]: _set_path(current, path[1:], value, key)})
    return dataclasses.replace(config, **{path[0]: _parse(value, current, key)})


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    for key, value in overrides.items():
        if key.startswith("*."):
            config, hits = _set_everywhere(config, key[2:], value)
            if not hits:
                raise ValueError(f"config override {key!r}: no field {key[2:]!r} anywhere in the config")
        else:
            config = _set_path(config, key.split("."), value, key)
    return config


def parse_overrides(items: list[str], flag: str = "--set") -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            example = "eval_episodes=10" if flag == "--train-set" else "critic.num_critics=10"
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {example}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
