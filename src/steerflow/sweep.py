"""`steerflow sweep`: a grid of independent, resumable run units.

A sweep expands agents × tasks × the cartesian product of the `--grid` values into *units*. A unit
is one configuration (agent, task, agent overrides, training overrides) with ALL its seeds, trained
by one `steerflow train --seeds ... --parallel vmap` process into its own directory
`DIR/runs/<id>`. Units share nothing but the cached dataset (whose generation is safe to race), so
each unit is an independent job whose state lives in its run directory alone:

* `done`: `final.json` holds the unit's step count and seeds (skipped);
* `partial`: `checkpoints/latest.msgpack` exists (resumed with `--resume`);
* `pending`: neither.

So a killed sweep is continued by running the same command again, and nothing needs a scheduler
process that stays alive. `DIR/manifest.json` records the sweep arguments and every unit with the
exact `steerflow train` command that runs it (that command carries `--resume`, which continues a
partial run and starts an empty one afresh). Running the same sweep again is idempotent; another
grid into the same DIR adds its units to the manifest and removes none.

Execution (`--backend`, `steerflow.backends`): the local runner starts `--jobs N` unit processes at
a time (one CPU thread each when N > 1), logs to `DIR/logs/<id>.log`; `ray` runs each unit as a Ray
task and `slurm` the sweep as one submitit job array, with `--runs-root` holding the run directories
and logs on storage every node sees. Whatever the backend, the driver records in the manifest's
`state` when each unit is submitted and how it ended (`--dry-run` shows it). A cluster can also run
one unit per job by hand: `--print-commands` prints one `steerflow sweep --out DIR --unit ID` line
per unfinished unit, and such a line reads its unit from the manifest and trains it in the
foreground (skipping it if done, resuming it if partial).

Grid values are scalars (comma-separated); tuple-valued fields such as `*.hidden` can be set for
all units with `--set` but not gridded. Keys may be scoped to one agent: `lps:alpha=1,3,10`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from steerflow.train import RunSpec

STATUSES = ("done", "partial", "pending")


@dataclass
class Unit:
    """One configuration of a sweep with all its seeds: one `steerflow train` process."""

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

    @property
    def run_dir(self) -> str:  # relative to the sweep directory, or absolute under --runs-root
        return f"{self.runs_root}/{self.id}" if self.runs_root else f"runs/{self.id}"

    @property
    def log(self) -> str:  # beside the run directories: a worker on another node writes it
        return f"{self.runs_root}/logs/{self.id}.log" if self.runs_root else f"logs/{self.id}.log"

    def spec(self) -> RunSpec:
        return RunSpec(agent=self.agent, task=self.task, seeds=list(self.seeds), preset=self.preset,
                       overrides=dict(self.overrides), train_overrides=dict(self.train_overrides))

    def command(self, out: Path) -> list[str]:
        from steerflow.train import train_command

        return train_command(self.spec(), Path(out) / self.run_dir, resume=True)

    def record(self, out: Path) -> dict:
        return {**dataclasses.asdict(self), "run_dir": self.run_dir, "log": self.log,
                "command": shlex.join(self.command(out))}

    @classmethod
    def from_record(cls, record: dict) -> "Unit":
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})


# --------------------------------------------------------------------------- parsing & expansion

def split_list(flag: str, text: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",")]
    if not str(text).strip() or not all(items):
        raise ValueError(f"{flag} {text!r}: expected a comma-separated list with no empty item")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} {text!r}: repeats a value")
    return items


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in split_list("--seeds", text)]
    except ValueError as err:
        if "--seeds" in str(err):
            raise
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


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

    grids: dict[str, dict[str, list[str]]] = {a: {} for a in agents}  # agent → key → values
    for item in grid:
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
                                  steps=tc.steps, runs_root=runs_root))
    return units


# --------------------------------------------------------------------------- manifest & status

def manifest_path(out: Path) -> Path:
    return Path(out) / "manifest.json"


def load_manifest(out: Path) -> dict | None:
    path = manifest_path(out)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or delete it") from None


def _identity(record: dict) -> dict:
    keys = ("agent", "task", "seeds", "preset", "overrides", "train_overrides")
    return json.loads(json.dumps({**{k: record.get(k) for k in keys}, "runs_root": record.get("runs_root", "")}))


def merge_manifest(out: Path, units: list[Unit], args: dict | None = None) -> dict:
    """Add `units` (and the sweep `args`) to DIR/manifest.json, keeping the units already there; a
    unit id that is already there with other settings is an error. Written only when it changes."""
    from steerflow.runinfo import atomic_write_json

    out = Path(out)
    old = load_manifest(out) or {}
    records = {r["id"]: r for r in old.get("units", [])}
    for unit in units:
        record = unit.record(out)
        known = records.get(unit.id)
        if known is not None and _identity(known) != _identity(record):
            raise ValueError(f"{manifest_path(out)}: unit {unit.id} is already there with other settings "
                             f"({_identity(known)} vs now {_identity(record)}); use another --out, or the "
                             "same --seeds/--preset/--set/--train-set/--runs-root as before")
        records[unit.id] = record
    sweeps = list(old.get("sweeps", []))
    if args is not None and json.loads(json.dumps(args)) not in sweeps:
        sweeps.append(args)
    manifest = {"format": 1, "sweeps": sweeps, "units": list(records.values()), "state": old.get("state", {})}
    manifest = json.loads(json.dumps(manifest))
    if manifest != old:
        atomic_write_json(manifest_path(out), manifest)
    return manifest


def record_state(out: Path, uid: str, **state) -> None:
    """Note what a sweep driver knows of a unit (submitted, done, failed, where, when) in the manifest's
    `state`, as it happens, so that `--dry-run` shows it; only the driver writes the manifest. The
    run directory stays the truth about done/partial/pending."""
    from steerflow.runinfo import atomic_write_json

    manifest = load_manifest(out) or {"format": 1, "sweeps": [], "units": []}
    states = manifest.setdefault("state", {})
    states[uid] = {**states.get(uid, {}), **state, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(manifest_path(out), manifest)


def read_final(out: Path, unit: Unit) -> dict | None:
    try:
        return json.loads((Path(out) / unit.run_dir / "final.json").read_text())
    except (OSError, ValueError):
        return None


def unit_status(out: Path, unit: Unit) -> str:
    run_dir = Path(out) / unit.run_dir
    final = read_final(out, unit)
    if final and final.get("steps") == unit.steps and list(final.get("seeds", [])) == list(unit.seeds):
        return "done"
    if (run_dir / "checkpoints" / "latest.msgpack").exists():
        return "partial"
    return "pending"


def status_table(out: Path, units: list[Unit]) -> str:
    """One line per unit: its status from the run directory, its result, and the last thing a
    sweep driver recorded of it (e.g. `ray: submitted 12:00:01`, which a dead driver leaves stale)."""
    width = max([len(u.id) for u in units] + [4])
    states = (load_manifest(out) or {}).get("state", {})
    lines = [f"{'status':8} {'steps':>9}  {'unit':{width}}  result"]
    counts = {s: 0 for s in STATUSES}
    for u in units:
        status = unit_status(out, u)
        counts[status] += 1
        final = read_final(out, u) if status == "done" else None
        result = f"mean success {final['mean']:.3f}" if final and "mean" in final else ""
        state = states.get(u.id)
        if state and not (status == "done" and state.get("event") == "done"):
            result += (f"  [{state.get('backend', '?')}: {state.get('event', '?')} {state.get('at', '')}"
                       + (f", {state['error']}" if state.get("error") else "") + "]")
        lines.append(f"{status:8} {u.steps:>9}  {u.id:{width}}  {result.strip()}".rstrip())
    lines.append(f"{len(units)} units: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def unit_command(out: Path, uid: str) -> list[str]:
    """The command a cluster job runs for one unit: it reads the unit from the manifest."""
    return [sys.executable, "-m", "steerflow.cli", "sweep", "--out", str(out), "--unit", uid]


# --------------------------------------------------------------------------- running

def run_unit(out: Path, unit: Unit) -> dict:
    """Train one unit in this process (in the foreground): skip it if done, resume it if partial."""
    from steerflow.train import train

    if unit_status(out, unit) == "done":
        print(f"{unit.id}: already done ({Path(out) / unit.run_dir / 'final.json'})")
        return read_final(out, unit)
    return train(unit.spec(), Path(out) / unit.run_dir, resume=True)


class Progress:
    """What every backend does as its units start and end: the progress bar, one line per event, the
    manifest's `state` (so `--dry-run` shows the live state) and the failures, {id: what went wrong};
    a unit that exits cleanly without its final.json at the resolved step count has failed too."""

    def __init__(self, out: Path, units: list[Unit], backend: str, how: str, log: list[str] = ("csv",)):
        from tqdm import tqdm

        self.out, self.backend, self.log = Path(out), backend, list(log)
        self.status = {u.id: unit_status(self.out, u) for u in units}
        self.todo = [u for u in units if self.status[u.id] != "done"]
        self.by_id = {u.id: u for u in self.todo}
        self.failed: dict[str, str] = {}
        n_done = len(units) - len(self.todo)
        print(f"{len(units)} units: {n_done} done (skipped), "
              f"{sum(self.status[u.id] == 'partial' for u in self.todo)} partial (resumed), "
              f"{sum(self.status[u.id] == 'pending' for u in self.todo)} pending; {how}")
        self.bar = tqdm(total=len(units), initial=n_done, desc=f"sweep ({backend})", unit="unit",
                        dynamic_ncols=True, smoothing=0)

    def started(self, uid: str, where: str = "", event: str = "started") -> None:
        unit = self.by_id[uid]
        self.bar.write(f"[{event}] {uid} ({self.status[uid]})  log: {self.out / unit.log}{where}")
        record_state(self.out, uid, backend=self.backend, event=event, error=None)

    def finished(self, uid: str, error: str | None = None) -> None:
        unit = self.by_id[uid]
        if error is None and unit_status(self.out, unit) != "done":
            error = f"exit code 0 but no final.json at step {unit.steps}"
        if error:
            self.failed[uid] = error
            self.bar.write(f"[FAILED] {uid}: {error}, log {self.out / unit.log}")
            record_state(self.out, uid, backend=self.backend, event="failed", error=error)
        else:
            final = read_final(self.out, unit) or {}
            self.bar.write(f"[done] {uid}: mean success {final.get('mean', float('nan')):.3f}")
            if set(self.log) - {"csv"}:  # one tracker run per unit, grouped by the sweep
                from steerflow.tracking import export_in_subprocess

                problem = export_in_subprocess(self.out / unit.run_dir, self.log, group=self.out.name, name=uid)
                if problem:
                    self.bar.write(f"[tracking] {uid}: export to {','.join(self.log)} failed: {problem}")
            record_state(self.out, uid, backend=self.backend, event="done", error=None)
        self.bar.update(1)
        self.bar.set_postfix(failed=len(self.failed))

    def close(self) -> None:
        self.bar.close()


def run_units(out: Path, units: list[Unit], jobs: int = 1, log: list[str] = ("csv",)) -> dict[str, str]:
    """Run every unfinished unit on this machine, `jobs` processes at a time; returns {id: what went
    wrong} for the failed ones (a failure does not stop the others)."""
    from steerflow.train import run_commands, single_thread_env

    out = Path(out)
    progress = Progress(out, units, "local", f"{jobs} at a time; logs in {out / 'logs'}", log)
    jobs_list = [(u.id, u.command(out), out / u.log) for u in progress.todo]
    try:
        run_commands(jobs_list, max(1, jobs), env=single_thread_env() if jobs > 1 else None, pin=jobs > 1,
                     on_start=lambda uid, cmd, log: progress.started(uid),
                     on_finish=lambda uid, code: progress.finished(uid, f"exit code {code}" if code else None))
    finally:
        progress.close()
    return progress.failed


def sweep_args(agents, tasks, seeds, preset, grid, sets, train_sets, runs_root: str = "") -> dict:
    return {"agents": list(agents), "tasks": list(tasks), "seeds": list(seeds), "preset": preset,
            "grid": list(grid), "set": list(sets), "train_set": list(train_sets),
            **({"runs_root": runs_root} if runs_root else {})}


def main(out: Path, agents: str = "", tasks: str = "", seeds: str = "0,1,2", preset: str = "cpu",
         grid: list[str] = (), sets: list[str] = (), train_sets: list[str] = (), jobs: int = 1,
         dry_run: bool = False, unit: str | None = None, print_commands: bool = False,
         backend: str = "local", resources=None, address: str = "", runs_root: Path | None = None,
         slurm_cluster: str = "slurm", log: str = "csv") -> int:
    """The `steerflow sweep` command; returns the exit status (1 if a unit failed).

    With --agents and --tasks, the sweep's units are expanded, validated and added to the manifest,
    and the command acts on them; without, it acts on every unit of an existing manifest. `backend`
    (`steerflow.backends`) says where the units run, with `resources` (a UnitResources) each."""
    from steerflow.backends import BACKENDS, UnitResources

    out = Path(out).expanduser().absolute()
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: expected at least 1")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    from steerflow.tracking import check_available, parse_kinds

    resources = resources or UnitResources()
    resources.check()
    trackers = parse_kinds(log)
    check_available(trackers)
    root = str(Path(runs_root).expanduser().absolute()) if runs_root else ""
    if agents or tasks:
        if not (agents and tasks):
            raise ValueError("--agents and --tasks go together: give both (or neither, to act on every "
                             f"unit of {manifest_path(out)})")
        agent_list, task_list = split_list("--agents", agents), split_list("--tasks", tasks)
        seed_list = parse_seeds(seeds)
        units = expand(agent_list, task_list, seed_list, preset, grid=grid, sets=sets, train_sets=train_sets,
                       runs_root=root)
        args = sweep_args(agent_list, task_list, seed_list, preset, grid, sets, train_sets, root)
        # a dry run writes nothing; --print-commands writes the manifest its `--unit` commands read
        manifest = load_manifest(out) if dry_run and not print_commands else merge_manifest(out, units, args)
    else:
        if grid or sets or train_sets or root:
            raise ValueError("--grid/--set/--train-set/--runs-root need --agents and --tasks (a manifest's "
                             "units keep the run directories they were given)")
        manifest = load_manifest(out)
        if manifest is None:
            raise ValueError(f"--agents and --tasks are required: {manifest_path(out)} does not exist yet")
        units = [Unit.from_record(r) for r in manifest["units"]]

    if unit is not None:
        known = {u.id: u for u in (Unit.from_record(r) for r in (manifest or {}).get("units", []))}
        known.update({u.id: u for u in units})
        if unit not in known:
            close = [k for k in known if unit in k or k in unit][:5]
            raise ValueError(f"--unit {unit!r}: no such unit in {manifest_path(out)}"
                             + (f"; did you mean {close}?" if close else "; list them with --dry-run"))
        if dry_run:
            print(status_table(out, [known[unit]]))
        else:
            run_unit(out, known[unit])
        return 0
    if dry_run:
        print(status_table(out, units))
    if print_commands:
        for u in units:
            if unit_status(out, u) != "done":
                print(shlex.join(unit_command(out, u.id)))
    if dry_run or print_commands:
        return 0

    t0 = time.perf_counter()
    try:
        from steerflow.backends import run

        failed = run(backend, out, units, resources, jobs=jobs, address=address, slurm_cluster=slurm_cluster,
                     log=trackers)
    except KeyboardInterrupt:
        print("\ninterrupted: running units were stopped at their last checkpoint; run the same command "
              "again to resume them", file=sys.stderr)
        return 130
    print(status_table(out, units))
    print(f"sweep finished in {time.perf_counter() - t0:.0f} s; manifest: {manifest_path(out)}")
    if failed:
        print(f"{len(failed)} unit(s) failed:", file=sys.stderr)
        for uid, what in failed.items():
            print(f"  {uid}: {what}, log {out / next(u.log for u in units if u.id == uid)}", file=sys.stderr)
        return 1
    return 0
