"""The `steerflow sweep` command: `SweepOptions`, the one options object (built by
`steerflow.cli.Sweep` from its flags, or by a caller) that `SweepOptions.validate` checks once, and
`run`, which acts on it: it expands the units and adds them to the manifest, lists them
(`--dry-run`, `--print-commands`), trains one (`--unit ID`) or runs them all on a backend."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from steerflow.flags import check_out_dir, parse_seed_list, positive

from .grid import Unit, expand, split_list
from .manifest import load_manifest, manifest_path, merge_manifest, status_table, sweep_args, unit_command, unit_status
from .runner import run_backend, run_unit

if TYPE_CHECKING:
    from steerflow.backends import UnitResources


@dataclass
class SweepOptions:
    """What a `steerflow sweep` is asked to do (the flags of `steerflow sweep --help`, which say
    what each does); `resources` is a `steerflow.backends.UnitResources` (None: its defaults).
    `validate` fills in the fields after `log`."""

    out: Path
    agents: str = ""
    tasks: str = ""
    seeds: str = "0,1,2"
    preset: str = "cpu"
    grid: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    train_sets: list[str] = field(default_factory=list)
    jobs: int = 1
    dry_run: bool = False
    unit: str | None = None
    print_commands: bool = False
    backend: str = "local"
    resources: UnitResources | None = None
    address: str = ""
    runs_root: Path | None = None
    slurm_cluster: str = "slurm"
    log: str = "csv"
    trackers: list[str] = field(default_factory=list, init=False)  # parsed --log
    units: list[Unit] | None = field(default=None, init=False, repr=False)  # of --agents/--tasks; None: the manifest's
    args: dict | None = field(default=None, init=False)  # this sweep as the manifest records it
    validated: bool = field(default=False, init=False)

    @property
    def sweep_dir(self) -> Path:
        return Path(self.out).expanduser().absolute()

    @property
    def root(self) -> str:
        """--runs-root, absolute; "" for the sweep's own runs/."""
        return str(Path(self.runs_root).expanduser().absolute()) if self.runs_root else ""

    def validate(self) -> SweepOptions:
        """Check every option, in the order the command line names them, and expand the units of
        --agents/--tasks (each resolves; nothing is read or written). Returns self."""
        from steerflow.backends import BACKENDS, UnitResources
        from steerflow.tracking import check_available, parse_kinds

        check_out_dir("--out", Path(self.out))
        positive("--jobs", self.jobs)
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        self.resources = self.resources or UnitResources()
        self.resources.check()
        self.trackers = parse_kinds(self.log)
        check_available(self.trackers)
        if self.runs_root is not None:
            check_out_dir("--runs-root", Path(self.runs_root))
        if self.agents or self.tasks:
            if not (self.agents and self.tasks):
                raise ValueError("--agents and --tasks go together: give both (or neither, to act on every "
                                 f"unit of {manifest_path(self.sweep_dir)})")
            agents, tasks = split_list("--agents", self.agents), split_list("--tasks", self.tasks)
            seeds = parse_seed_list(self.seeds)
            self.units = expand(agents, tasks, seeds, self.preset, grid=self.grid, sets=self.sets,
                                train_sets=self.train_sets, runs_root=self.root)
            self.args = sweep_args(agents, tasks, seeds, self.preset, self.grid, self.sets, self.train_sets, self.root)
        elif self.grid or self.sets or self.train_sets or self.root:
            raise ValueError("--grid/--set/--train-set/--runs-root need --agents and --tasks (a manifest's "
                             "units keep the run directories they were given)")
        self.validated = True
        return self


def run(options: SweepOptions) -> int:
    """The `steerflow sweep` command; returns the exit status (1 if a unit failed).

    With --agents and --tasks, the sweep's units are expanded, validated and added to the manifest,
    and the command acts on them; without, it acts on every unit of an existing manifest. `backend`
    (`steerflow.backends`) says where the units run, with `resources` (a UnitResources) each."""
    opts = options if options.validated else options.validate()
    out = opts.sweep_dir
    if opts.units is not None:
        units = opts.units
        # a dry run writes nothing; --print-commands writes the manifest its `--unit` commands read
        manifest = load_manifest(out) if opts.dry_run and not opts.print_commands else merge_manifest(out, units, opts.args)
    else:
        manifest = load_manifest(out)
        if manifest is None:
            raise ValueError(f"--agents and --tasks are required: {manifest_path(out)} does not exist yet")
        units = [Unit.from_record(r) for r in manifest["units"]]
    if opts.unit is not None:
        return _one_unit(opts, out, units, manifest)
    if opts.dry_run:
        print(status_table(out, units))
    if opts.print_commands:
        for u in units:
            if unit_status(out, u) in ("partial", "pending"):
                print(shlex.join(unit_command(out, u.id)))
    if opts.dry_run or opts.print_commands:
        return 0
    return _run_all(opts, out, units)


def main(out: Path, **options) -> int:
    """`run(SweepOptions(out, **options))`: the command, called from Python."""
    return run(SweepOptions(out=out, **options))


def _one_unit(opts: SweepOptions, out: Path, units: list[Unit], manifest: dict | None) -> int:
    """--unit ID: its status (--dry-run) or its training, in the foreground."""
    known = {u.id: u for u in (Unit.from_record(r) for r in (manifest or {}).get("units", []))}
    known.update({u.id: u for u in units})
    if opts.unit not in known:
        close = [k for k in known if opts.unit in k or k in opts.unit][:5]
        raise ValueError(f"--unit {opts.unit!r}: no such unit in {manifest_path(out)}"
                         + (f"; did you mean {close}?" if close else "; list them with --dry-run"))
    if opts.dry_run:
        print(status_table(out, [known[opts.unit]]))
    else:
        run_unit(out, known[opts.unit])
    return 0


def _run_all(opts: SweepOptions, out: Path, units: list[Unit]) -> int:
    """Every unfinished unit on the backend; the status table and the failures at the end."""
    t0 = time.perf_counter()
    try:
        failed = run_backend(opts.backend, out, units, opts.resources, jobs=opts.jobs, address=opts.address,
                             slurm_cluster=opts.slurm_cluster, log=opts.trackers)
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
