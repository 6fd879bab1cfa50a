"""Running a sweep's units: `run_unit` (one unit in the foreground, a cluster job's `--unit ID`),
`run_units` (the local backend: `--jobs N` unit processes at a time, logs in `DIR/logs/<id>.log`),
`run_backend` (local, or the Ray and SLURM engines of `steerflow.backends`) and `Progress`, what
every backend does as its units start and end (progress bar, manifest `state`, tracker export)."""

from __future__ import annotations

from pathlib import Path

from .grid import Unit
from .manifest import STATUSES, read_final, record_state, unit_holder, unit_status


def run_unit(out: Path, unit: Unit) -> dict:
    """Train one unit in the foreground (in this process, or its `argv` as a child): skip it if
    done, resume it if partial."""
    import os

    from steerflow.backends import run_unit_process
    from steerflow.train import train

    if unit_status(out, unit) == "done":
        print(f"{unit.id}: already done ({Path(out) / unit.run_dir / 'final.json'})")
        return read_final(out, unit)
    if not unit.argv:
        return train(unit.spec(), Path(out) / unit.run_dir, resume=True)
    code = run_unit_process(unit.command(out), Path(out) / unit.log, dict(os.environ))
    if code:
        raise RuntimeError(f"unit {unit.id}: exit code {code}; its log is {Path(out) / unit.log}")
    return read_final(out, unit)


class Progress:
    """What every backend does as its units start and end: the progress bar, one line per event, the
    manifest's `state` (so `--dry-run` shows the live state) and the failures, {id: what went wrong};
    a unit that exits cleanly without its final.json at the resolved step count has failed too. A
    unit another live process is training (`running`: another driver's, a `--unit` job's) is left
    to it and named, neither started nor counted as failed."""

    def __init__(self, out: Path, units: list[Unit], backend: str, how: str, log: list[str] = ("csv",),
                 on_done=None):
        from tqdm import tqdm

        self.out, self.backend, self.log, self.on_done = Path(out), backend, list(log), on_done
        self.status = {u.id: unit_status(self.out, u) for u in units}
        self.todo = [u for u in units if self.status[u.id] in ("partial", "pending")]
        self.by_id = {u.id: u for u in self.todo}
        self.failed: dict[str, str] = {}
        count = {s: sum(v == s for v in self.status.values()) for s in STATUSES}
        print(f"{len(units)} units: {count['done']} done (skipped), {count['partial']} partial (resumed), "
              f"{count['pending']} pending, {count['running']} running elsewhere (left to it); {how}")
        for u in units:
            if self.status[u.id] == "running":
                print(self.elsewhere(u))
        self.bar = tqdm(total=len(units), initial=len(units) - len(self.todo), desc=f"sweep ({backend})",
                        unit="unit", dynamic_ncols=True, smoothing=0)

    def started(self, uid: str, where: str = "", event: str = "started") -> None:
        unit = self.by_id[uid]
        self.bar.write(f"[{event}] {uid} ({self.status[uid]})  log: {self.out / unit.log}{where}")
        record_state(self.out, uid, backend=self.backend, event=event, error=None)

    def finished(self, uid: str, error: str | None = None) -> None:
        unit = self.by_id[uid]
        status = unit_status(self.out, unit)
        if status == "running":  # another process took the unit first, and its run lock refused this one
            self.bar.write(self.elsewhere(unit))
        elif error or status != "done":
            self._failed(unit, error or f"exit code 0 but no final.json at step {unit.steps}")
        else:
            self._done(unit)
        self.bar.update(1)
        self.bar.set_postfix(failed=len(self.failed))

    def elsewhere(self, unit: Unit) -> str:
        from steerflow.runlock import describe

        return f"[running elsewhere] {unit.id}: trained by {describe(unit_holder(self.out, unit) or {})}; left to it"

    def _failed(self, unit: Unit, error: str) -> None:
        self.failed[unit.id] = error
        self.bar.write(f"[FAILED] {unit.id}: {error}, log {self.out / unit.log}")
        record_state(self.out, unit.id, backend=self.backend, event="failed", error=error)

    def _done(self, unit: Unit) -> None:
        final = read_final(self.out, unit) or {}
        self.bar.write(f"[done] {unit.id}: mean success {final.get('mean', float('nan')):.3f}")
        if set(self.log) - {"csv"}:  # one tracker run per unit, grouped by the sweep
            from steerflow.tracking import export_in_subprocess

            problem = export_in_subprocess(self.out / unit.run_dir, self.log, group=self.out.name, name=unit.id)
            if problem:
                self.bar.write(f"[tracking] {unit.id}: export to {','.join(self.log)} failed: {problem}")
        record_state(self.out, unit.id, backend=self.backend, event="done", error=None)
        if self.on_done is not None:  # e.g. a study copying the unit's records as it finishes
            self.on_done(unit)

    def close(self) -> None:
        self.bar.close()


def run_units(out: Path, units: list[Unit], jobs: int = 1, log: list[str] = ("csv",), on_done=None) -> dict[str, str]:
    """Run every unfinished unit on this machine, `jobs` processes at a time; returns {id: what went
    wrong} for the failed ones (a failure does not stop the others). `on_done(unit)` runs as each
    unit finishes."""
    from steerflow.train import run_commands, single_thread_env

    out = Path(out)
    progress = Progress(out, units, "local", f"{jobs} at a time; logs in {out / 'logs'}", log, on_done)
    jobs_list = [(u.id, u.command(out), out / u.log) for u in progress.todo]
    try:
        run_commands(jobs_list, max(1, jobs), env=single_thread_env() if jobs > 1 else None, pin=jobs > 1,
                     on_start=lambda uid, cmd, log: progress.started(uid),
                     on_finish=lambda uid, code: progress.finished(uid, f"exit code {code}" if code else None))
    finally:
        progress.close()
    return progress.failed


def run_backend(backend: str, out: Path, units: list[Unit], res, jobs: int = 1, address: str = "",
                slurm_cluster: str = "slurm", log: list[str] = ("csv",), on_done=None) -> dict[str, str]:
    """Run every unfinished unit of `units` on `backend` (`res`: a `steerflow.backends.UnitResources`);
    returns {id: what went wrong}. `log`: the trackers each finished unit is exported to
    (`steerflow.tracking`); `on_done(unit)` runs on this machine as each unit finishes. The engines
    get a `Progress` factory, so that they need nothing of the sweep."""
    from steerflow.backends import BACKENDS

    def progress(name: str):
        return lambda how: Progress(out, units, name, how, log, on_done)

    if backend == "local":
        return run_units(out, units, jobs, log=log, on_done=on_done)
    if backend == "ray":
        from steerflow.backends.ray_cluster import run_ray

        return run_ray(out, res, progress("ray"), address)
    if backend == "slurm":
        from steerflow.backends.slurm import run_slurm

        name = "slurm" if slurm_cluster == "slurm" else f"submitit-{slurm_cluster}"
        return run_slurm(out, res, progress(name), cluster=slurm_cluster)
    raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
