"""A sweep's units: `Unit` (one configuration with all its seeds, one `steerflow train` process
into its own run directory) and `expand`, which makes them from agents × tasks × the cartesian
product of the `--grid` values, with `--set`/`--train-set` overrides scoped to one agent
(`lps:alpha=1,3,10`) or to all. Grid values are scalars (comma-separated); tuple-valued fields such
as `*.hidden` can be set for all units with `--set` but not gridded. Every unit resolves before
anything runs, and errors name the flag and the value at fault."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from steerflow.train import RunSpec


@dataclass
class Unit:
    """One configuration with its seeds, trained by one process into its own run directory: a
    `steerflow train` process, or `argv` (a reference implementation's runner). A sweep's unit holds
    all the sweep's seeds; a study that commits seed by seed gives each seed a unit of its own
    (benchmarks/protocol/study.py)."""

    id: str
    agent: str
    task: str
    seeds: list[int]
    preset: str
    overrides: dict = field(default_factory=dict)  # agent-config overrides: --set and this unit's grid values
    train_overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)  # this unit's grid values alone (they name it)
    steps: int = 0  # resolved training steps: final.json at this step means done
    runs_root: str = ""  # absolute directory of the run directories (--runs-root); "" = the sweep's runs/
    online_steps: int = 0  # resolved env steps per seed of the online phase (0: offline only)
    from_run: str = ""  # the finished offline run whose checkpoint the online phase continues (`--from`)
    argv: list[str] = field(default_factory=list)  # the command that trains it, when not `steerflow train`

    @property
    def run_dir(self) -> str:  # relative to the sweep directory, or absolute under --runs-root
        return f"{self.runs_root}/{self.id}" if self.runs_root else f"runs/{self.id}"

    @property
    def log(self) -> str:  # beside the run directories: a worker on another node writes it
        return f"{self.runs_root}/logs/{self.id}.log" if self.runs_root else f"logs/{self.id}.log"

    def spec(self) -> RunSpec:
        return RunSpec(agent=self.agent, task=self.task, seeds=list(self.seeds), preset=self.preset,
                       overrides=dict(self.overrides), train_overrides=dict(self.train_overrides),
                       from_run=self.from_run or None)

    def command(self, out: Path) -> list[str]:
        from steerflow.train import train_command

        return list(self.argv) or train_command(self.spec(), Path(out) / self.run_dir, resume=True)

    def record(self, out: Path) -> dict:
        return {**dataclasses.asdict(self), "run_dir": self.run_dir, "log": self.log,
                "command": shlex.join(self.command(out))}

    @classmethod
    def from_record(cls, record: dict) -> "Unit":
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})


def split_list(flag: str, text: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",")]
    if not str(text).strip() or not all(items):
        raise ValueError(f"{flag} {text!r}: expected a comma-separated list with no empty item")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} {text!r}: repeats a value")
    return items


def _scoped(flag: str, item: str, agents: list[str]) -> tuple[str | None, str, str]:
    """`[AGENT:]KEY=VALUE` → (agent or None, key, value)."""
    if "=" not in item:
        raise ValueError(f"{flag} {item!r}: expected [AGENT:]KEY=VALUE, e.g. {flag} lps:alpha=3")
    key, value = (s.strip() for s in item.split("=", 1))
    agent = None
    if ":" in key:
        agent, key = (s.strip() for s in key.split(":", 1))
        if agent not in agents:
            raise ValueError(f"{flag} {item!r}: agent {agent!r} is not in --agents {','.join(agents)}")
    if not key:
        raise ValueError(f"{flag} {item!r}: empty key")
    return agent, key, value


def _scoped_overrides(flag: str, items: list[str], agents: list[str], check) -> dict[str, dict[str, str]]:
    """Per agent: the overrides of `items` (agent-scoped ones win over unscoped ones), each checked
    with `check(agent, {key: value})` so that an error names the flag and item at fault."""
    parsed = [(item, *_scoped(flag, item, agents)) for item in items]
    out: dict[str, dict[str, str]] = {a: {} for a in agents}
    for scoped_pass in (False, True):
        for item, agent, key, value in parsed:
            if (agent is not None) != scoped_pass:
                continue
            for a in ([agent] if agent else agents):
                try:
                    check(a, {key: value})
                except ValueError as err:
                    hint = ("; it applies to every agent: scope it to one with AGENT:KEY=VALUE"
                            if agent is None and len(agents) > 1 else "")
                    raise ValueError(f"{flag} {item!r} (agent {a}): {err}{hint}") from None
                out[a][key] = value
    return out


def _field_values(config, key: str) -> list:
    """Current values of the field(s) an override key sets (`*.name`: at every depth)."""
    if key.startswith("*."):
        found = []

        def walk(c):
            for f in dataclasses.fields(c):
                value = getattr(c, f.name)
                if f.name == key[2:]:
                    found.append(value)
                elif dataclasses.is_dataclass(value):
                    walk(value)

        walk(config)
        return found
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return [value]


def unit_id(agent: str, task: str, grid: dict) -> str:
    """`{agent}__{task}__{k1=v1,k2=v2}` (keys sorted, `*.` dropped; `default` without grid values),
    made safe as a file name; very long ids are cut and end in a hash of the full one."""
    shown = sorted((k[2:] if k.startswith("*.") else k, v) for k, v in grid.items())
    tag = ",".join(f"{k}={v}" for k, v in shown) or "default"
    full = f"{agent}__{task}__{tag}"
    safe = re.sub(r"[^A-Za-z0-9._,=+-]", "_", full)
    if len(safe) > 150:
        safe = f"{safe[:140]}-{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    return safe


def expand(agents: list[str], tasks: list[str], seeds: list[int], preset: str = "cpu",
           grid: list[str] = (), sets: list[str] = (), train_sets: list[str] = (),
           runs_root: str = "") -> list[Unit]:
    """The units of a sweep, validated: every unit resolves (agent, task, preset, overrides) before
    anything runs, and errors name the flag and the value at fault."""
    from steerflow.agents import get_agent
    from steerflow.config import apply_overrides
    from steerflow.data.tasks import parse_task
    from steerflow.train import PRESETS, TrainConfig, resolve

    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: unknown preset; choose one of {sorted(PRESETS)}")
    if not agents or not tasks or not seeds:
        raise ValueError("--agents, --tasks and --seeds each need at least one value")
    for flag, values in (("--agents", agents), ("--tasks", tasks), ("--seeds", seeds)):
        if len({*values}) != len(values):
            raise ValueError(f"{flag} {','.join(map(str, values))!r}: repeats a value")
    modules = {}
    for a in agents:
        try:
            modules[a] = get_agent(a)
        except ValueError as err:
            raise ValueError(f"--agents {a!r}: {err}") from None
    for t in tasks:
        try:
            parse_task(t)
        except ValueError as err:
            raise ValueError(f"--tasks {t!r}: {err}") from None

    set_by_agent = _scoped_overrides("--set", list(sets), agents,
                                     lambda a, o: apply_overrides(modules[a].Config(), o))
    train_by_agent = _scoped_overrides("--train-set", list(train_sets), agents,
                                       lambda a, o: apply_overrides(TrainConfig(), o))

    grids = _grids(list(grid), agents, modules, set_by_agent)

    units, seen = [], {}
    for a in agents:
        keys = list(grids[a])
        for t in tasks:
            for combo in itertools.product(*(grids[a][k] for k in keys)):
                point = dict(zip(keys, combo))
                uid = unit_id(a, t, point)
                run = RunSpec(agent=a, task=t, seeds=list(seeds), preset=preset,
                              overrides={**set_by_agent[a], **point}, train_overrides=dict(train_by_agent[a]))
                try:
                    _, _, tc = resolve(run)
                except ValueError as err:
                    raise ValueError(f"unit {uid} (--preset/--set/--train-set/--grid): {err}") from None
                if uid in seen:
                    raise ValueError(f"units {seen[uid]} and {point} of {a} on {t} get the same id {uid!r}")
                seen[uid] = point
                units.append(Unit(id=uid, agent=a, task=t, seeds=list(seeds), preset=preset,
                                  overrides=run.overrides, train_overrides=run.train_overrides, grid=point,
                                  steps=tc.steps, runs_root=runs_root, online_steps=tc.online_steps))
    return units


def _grids(items: list[str], agents: list[str], modules: dict, set_by_agent: dict) -> dict[str, dict[str, list[str]]]:
    """Per agent, per key, the values of the `--grid` items, each value checked against the
    agent's config (scalars only, no key both gridded and `--set`)."""
    from steerflow.config import apply_overrides

    grids: dict[str, dict[str, list[str]]] = {a: {} for a in agents}  # agent → key → values
    for item in items:
        agent, key, raw = _scoped("--grid", item, agents)
        values = [v.strip() for v in raw.split(",")]
        if not raw or any(not v for v in values):
            raise ValueError(f"--grid {item!r}: expected [AGENT:]KEY=V1,V2,... with non-empty values")
        for a in [agent] if agent else agents:
            if key in grids[a]:
                raise ValueError(f"--grid {item!r}: {key} is gridded twice for agent {a}")
            if key in set_by_agent[a]:
                raise ValueError(f"--grid {item!r}: {key} is also fixed by --set for agent {a}; keep one")
            config = modules[a].Config()
            for v in values:
                try:
                    apply_overrides(config, {key: v})
                except ValueError as err:
                    raise ValueError(f"--grid {item!r} (agent {a}, value {v!r}): {err}") from None
            if any(isinstance(x, (tuple, list)) for x in _field_values(config, key)):
                raise ValueError(f"--grid {item!r}: {key} is tuple-valued in {a}'s config, and grids take "
                                 f"scalar values only (commas separate grid values); set it for every unit "
                                 f"with --set {key}=V1,V2 or run one sweep per value")
            if len({*values}) != len(values):
                raise ValueError(f"--grid {item!r}: repeats a value")
            grids[a][key] = values
    return grids
