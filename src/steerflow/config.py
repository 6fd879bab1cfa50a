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


# ------------------------------------------------------------------ values checked by meaning
# The one table of what a config value may be, keyed by field name (the same name means the same
# thing in every agent and in the training config). Every float must also be finite.

def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _share(v):
    return 0 <= v <= 1


def _discount(v):
    return 0 < v <= 1


def _sizes(v):
    return all(int(x) >= 1 for x in v)


RULES: dict[str, tuple] = {}  # field name -> (test, what is expected)
for _names, _rule in (
    (("learning_rate", "init_temperature", "logit_std", "q_clip", "steer_eps", "outer_time_power",
      "updates_per_env_step"), (_positive, "a positive number")),
    (("alpha", "max_grad_norm", "rho", "tilt", "noise_scale", "weight_c", "weight_p", "cons_weight",
      "diag_weight"), (_non_negative, "0 or more")),
    (("label_dropout", "equal_fraction", "p_diag", "p_cons", "expectile"), (_share, "a share in [0, 1]")),
    (("discount", "tau"), (_discount, "a number in (0, 1]")),
    (("num_critics", "num_samples", "num_posterior_samples", "heads", "depth", "tokens", "width", "dense",
      "embed_dim", "steps", "batch_size", "horizon", "updates_per_call", "log_every", "eval_every",
      "checkpoint_every", "eval_episodes", "eval_envs", "dataset_episodes", "dataset_episode_steps",
      "video_episodes", "online_envs"), (_positive, "a positive integer")),
    (("time_features", "online_steps", "replay_capacity", "video_every", "video_steps", "eval_workers",
      "dataset_seed"), (_non_negative, "0 or more")),
    (("max_wall_s",), (_non_negative, "seconds, 0 or more (0: no budget)")),
    (("hidden", "actor_hidden"), (_sizes, "layer sizes of 1 or more, e.g. 256,256")),
    (("online_ratio",), (lambda v: v <= 1, "a share in [0, 1] (or < 0: batches from offline ∪ online data)")),
):
    for _name in _names:
        RULES[_name] = _rule


def check_values(config: Any, flag: str, path: str = "") -> None:
    """ValueError naming `flag path=value` and what is expected, for the first value of `config`
    (a nested dataclass) that cannot be right: a non-finite float or one outside its `RULES`."""
    import math

    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), path + f.name
        if dataclasses.is_dataclass(value):
            check_values(value, flag, key + ".")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, tuple, list)):
            continue
        test, expected = RULES.get(f.name, (lambda v: True, ""))
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag} {key}={value}: expected a finite number{f' ({expected})' if expected else ''}")
        if not test(value):
            shown = _fmt_value(value)
            raise ValueError(f"{flag} {key}={shown}: expected {expected}")


def _fmt_value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
