"""A sweep's state on disk: `DIR/manifest.json` (the sweep arguments, every unit with the exact
`steerflow train` command that runs it, and the driver's `state`: when each unit was submitted
and how it ended) and each unit's status, read from its run directory alone: `done` (`final.json`
at the unit's step count and seeds), `running` (a live process holds its run lock,
`steerflow.runlock`: another driver's, or a `--unit` job's), `partial` (`checkpoints/latest.msgpack`),
`pending`. Several drivers may share a sweep directory (e.g. two studies with disjoint units): each
read-modify-write of the manifest holds `DIR/.manifest.lock`, so that none loses another's update."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from .grid import Unit

STATUSES = ("done", "partial", "pending", "running")


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
    keys = ("agent", "task", "seeds", "preset", "overrides", "train_overrides", "from_run")
    return json.loads(json.dumps({**{k: record.get(k) for k in keys}, "runs_root": record.get("runs_root", "")}))


def merge_manifest(out: Path, units: list[Unit], args: dict | None = None) -> dict:
    """Add `units` (and the sweep `args`) to DIR/manifest.json, keeping the units already there; a
    unit id that is already there with other settings is an error. Written only when it changes."""
    from steerflow.runinfo import atomic_write_json

    out = Path(out)
    with _writing(out):
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
    `state`, as it happens, so that `--dry-run` shows it; only drivers write the manifest, one write
    at a time. The run directory stays the truth about a unit's status."""
    from steerflow.runinfo import atomic_write_json

    with _writing(Path(out)):
        manifest = load_manifest(out) or {"format": 1, "sweeps": [], "units": []}
        states = manifest.setdefault("state", {})
        states[uid] = {**states.get(uid, {}), **state, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(manifest_path(out), manifest)


@contextlib.contextmanager
def _writing(out: Path):
    """Hold DIR/.manifest.lock (waiting for another driver's write, which takes milliseconds)."""
    from steerflow.runlock import hold

    out.mkdir(parents=True, exist_ok=True)
    with hold(out / ".manifest.lock", f"manifest {manifest_path(out)}", wait=True):
        yield


def read_final(out: Path, unit: Unit) -> dict | None:
    try:
        return json.loads((Path(out) / unit.run_dir / "final.json").read_text())
    except (OSError, ValueError):
        return None


def finished(final: dict | None, unit: Unit) -> bool:
    """Whether `final` (a final.json) records the whole of `unit`: its seeds, its offline steps and,
    for an online unit, its env steps on every seed (final.json's `steps` then also counts the
    online updates, a number the episodes decide)."""
    if not final or list(final.get("seeds", [])) != list(unit.seeds):
        return False
    if unit.online_steps:
        return (final.get("offline_steps") == unit.steps
                and min(final.get("online_env_steps") or [0]) >= unit.online_steps)
    return final.get("steps") == unit.steps


def unit_holder(out: Path, unit: Unit) -> dict | None:
    """The live process training `unit` ({"pid", "command", ...} from its lock file), or None
    (`runlock.run_dir_holder`: a unit with its own `argv` may hold the lock beside its run directory)."""
    from steerflow.runlock import run_dir_holder

    return run_dir_holder(Path(out) / unit.run_dir)


def unit_status(out: Path, unit: Unit) -> str:
    run_dir = Path(out) / unit.run_dir
    if finished(read_final(out, unit), unit):
        return "done"
    if unit_holder(out, unit) is not None:
        return "running"
    if (run_dir / "checkpoints" / "latest.msgpack").exists():
        return "partial"
    return "pending"


def status_table(out: Path, units: list[Unit]) -> str:
    """One line per unit: its status from the run directory, its result, and the last thing a
    sweep driver recorded of it (e.g. `ray: submitted 12:00:01`, which a dead driver leaves stale)."""
    from steerflow.runlock import describe

    width = max([len(u.id) for u in units] + [4])
    states = (load_manifest(out) or {}).get("state", {})
    lines = [f"{'status':8} {'steps':>9}  {'unit':{width}}  result"]
    counts = {s: 0 for s in STATUSES}
    for u in units:
        status = unit_status(out, u)
        counts[status] += 1
        final = read_final(out, u) if status == "done" else None
        result = f"mean success {final['mean']:.3f}" if final and "mean" in final else ""
        if status == "running":
            result = f"trained by {describe(unit_holder(out, u) or {})}"
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


def sweep_args(agents, tasks, seeds, preset, grid, sets, train_sets, runs_root: str = "") -> dict:
    return {"agents": list(agents), "tasks": list(tasks), "seeds": list(seeds), "preset": preset,
            "grid": list(grid), "set": list(sets), "train_set": list(train_sets),
            **({"runs_root": runs_root} if runs_root else {})}
