"""`steerflow` command line: data generation, training and evaluation.

    steerflow data generate DOMAIN [--episodes N] [--seed S] [--workers W]
    steerflow data info
    steerflow train --agent AGENT --task TASK [--seeds 0,1,2] [--steps N]
                    [--preset smoke|cpu|default|paper] [--out DIR] [--resume] [--base-from RUN_DIR]
    steerflow eval RUN_DIR [--episodes N]
    steerflow report RUN_DIR_OR_SWEEP... [--out report]
    steerflow toy [--out DIR] [--seeds 0,1,2] [--steps N] [--workers W]
    steerflow sweep --out DIR --agents A,B --tasks T1,T2 [--seeds 0,1,2] [--grid [AGENT:]KEY=V1,V2]...
                    [--set [AGENT:]KEY=V]... [--train-set KEY=V]... [--jobs N] [--dry-run]
                    [--print-commands] [--unit ID]
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

os.environ.setdefault("MUJOCO_GL", "egl")


@dataclass
class Generate:
    """Regenerate an OGBench play dataset locally with the package's scripted oracles."""

    domain: tyro.conf.Positional[str]
    episodes: int = 1000  # training episodes (validation gets episodes // 10 more)
    seed: int = 0
    workers: int = 1  # worker processes (output is identical for any count)

    def __call__(self):
        from steerflow.data.ogbench_gen import generate_dataset

        path = generate_dataset(self.domain, episodes=self.episodes, seed=self.seed, workers=self.workers)
        print(f"dataset ready: {path}")


@dataclass
class Info:
    """List the cached datasets with sizes and fingerprints."""

    def __call__(self):
        from steerflow.data.ogbench_gen import data_root, list_datasets

        rows = list_datasets()
        print(f"data directory: {data_root()}  (set STEERFLOW_DATA to move it)")
        if not rows:
            print("no cached datasets; create one with `steerflow data generate cube-single`")
        for row in rows:
            print(json.dumps(row))


@dataclass
class Data:
    """Generate and inspect locally regenerated OGBench datasets."""

    command: Union[Annotated[Generate, tyro.conf.subcommand("generate")],
                   Annotated[Info, tyro.conf.subcommand("info")]]

    def __call__(self):
        self.command()


# A flag that may be repeated and take several values: `--set a=1 --set b=2` or `--set a=1 b=2`
Repeatable = Annotated[tyro.conf.UseAppendAction[list[list[str]]], tyro.conf.arg(metavar="KEY=V ...")]


def flatten(groups: list[list[str]]) -> list[str]:
    return [item for group in groups for item in group]


@dataclass
class Train:
    """Train an agent on a task; prints the final success rate."""

    agent: str = "lps"  # lps | lpsd | bc-mf | bc-fm | qc-fql | qc-mfql | qc-bon | dsrl-na | dsrl-na-sac | cfgrl | qpilots-u | qpilots-m
    task: str = "cube-single-task2"  # DOMAIN-taskN[-sparse]
    seeds: str = "0"  # comma-separated, e.g. 0,1,2
    steps: int | None = None  # overrides the preset's step count
    preset: str = "cpu"  # smoke | cpu | default | paper
    out: Path | None = None  # run directory (default runs/AGENT-TASK-PRESET)
    resume: bool = False  # continue a killed run from its last checkpoint
    parallel: Literal["vmap", "processes"] = "vmap"  # seeds vmapped in one process, or a process per seed
    set: Repeatable = field(default_factory=list)  # agent-config overrides KEY=VALUE, e.g. critic.num_critics=10
    train_set: Repeatable = field(default_factory=list)  # training-config overrides, e.g. eval_episodes=10
    base_from: Path | None = None  # steer the frozen FM base of this finished run (qpilots-u, qpilots-m)

    def __call__(self):
        from steerflow.config import parse_overrides
        from steerflow.train import RunSpec, resolve, train, train_processes

        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise SystemExit(f"--seeds {self.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
        train_overrides = parse_overrides(flatten(self.train_set))
        if self.steps is not None:
            train_overrides["steps"] = str(self.steps)
        overrides = parse_overrides(flatten(self.set))
        if self.base_from is not None:
            from steerflow.agents import get_agent
            from steerflow.frozen_base import overrides_for

            overrides = overrides_for(self.base_from, get_agent(self.agent), overrides, seeds)
        run = RunSpec(agent=self.agent, task=self.task, seeds=seeds, preset=self.preset, overrides=overrides,
                      train_overrides=train_overrides,
                      base_from=None if self.base_from is None else str(self.base_from))
        resolve(run)  # fail on a bad agent/preset/override before any data work
        out = self.out or Path("runs") / f"{self.agent}-{self.task}-{self.preset}"
        if self.parallel == "processes" and len(seeds) > 1:
            final = train_processes(run, out, resume=self.resume)
        else:
            final = train(run, out, resume=self.resume)
        print(f"final success ({final['agent']} on {final['task']}, {final['steps']} steps): "
              f"mean {final['mean']:.3f}, per seed {final['final_success']}  -> {out}/final.json")


@dataclass
class Eval:
    """Evaluate a run's last checkpoint."""

    run_dir: tyro.conf.Positional[Path]
    episodes: int = 50
    workers: int = 2  # env worker processes

    def __call__(self):
        from steerflow.train import evaluate_run

        for record in evaluate_run(self.run_dir, self.episodes, self.workers):
            print(json.dumps(record))


@dataclass
class Report:
    """Aggregate finished runs (run directories, or directories holding them) into Markdown
    tables with 95% bootstrap CIs, learning-curve PNGs and records.json."""

    run_dirs: tyro.conf.Positional[list[Path]]  # run directories, or directories holding them (searched recursively)
    out: Path = Path("report")  # output directory for report.md, records.json, curves_*.png

    def __call__(self):
        from steerflow.report import build_report

        result = build_report(self.run_dirs, self.out)
        print(result["markdown"])
        print(f"report written to {self.out}/ (report.md, records.json, {len(result['files']) - 2} PNGs)")




@dataclass
class Toy:
    """The 2-D toy study of the LPS paper's Figures 2 and 3 (~2.5-3 min on 2 CPU cores): QC-FQL
    across α, DSRL-NA, LPS, QPILOTS-U/M across α on a one-step task with an empty, rewarding corner; writes
    fig2_alpha.png, fig3_latent_critic.png and summary.json and prints the numbers behind them."""

    out: Path = Path("runs/toy")
    seeds: str = "0,1,2"  # agent seeds, vmapped per method
    steps: int = 3000  # updates per method
    workers: int = 2  # training processes at once (one CPU thread each)

    def __call__(self):
        from steerflow.studies import toy
        from steerflow.sweep import parse_seeds

        try:
            seeds = tuple(parse_seeds(self.seeds))
        except ValueError as err:
            raise SystemExit(str(err))
        if self.steps < 1 or self.workers < 1:
            raise SystemExit("--steps and --workers must be positive")
        toy.main(self.out, toy.ToyConfig(seeds=seeds, steps=self.steps), workers=self.workers)


@dataclass
class Sweep:
    """Run agents x tasks x the product of --grid values as units: one configuration with all its
    seeds (vmapped) per unit, each an independent, resumable `steerflow train` run in
    OUT/runs/<id>. Done units are skipped and partial ones resumed, so re-running continues a
    killed sweep; OUT/manifest.json lists every unit and its command."""

    out: Path  # sweep directory: manifest.json, runs/<id>/, logs/<id>.log
    agents: str = ""  # comma-separated, e.g. lps,bc-mf (leave out to act on every unit of OUT/manifest.json)
    tasks: str = ""  # comma-separated DOMAIN-taskN[-sparse]
    seeds: str = "0,1,2"  # every unit trains all of them, vmapped in one process
    preset: str = "cpu"  # smoke | cpu | default | paper
    grid: Repeatable = field(default_factory=list)  # agent-config values to sweep (scalars; product of all)
    set: Repeatable = field(default_factory=list)  # agent-config overrides (AGENT: scopes one)
    train_set: Repeatable = field(default_factory=list)  # training-config overrides, e.g. steps=30000
    jobs: int = 1  # units run at a time on this machine (one CPU thread each when > 1)
    dry_run: bool = False  # print the units and their status (done/partial/pending), run nothing
    unit: Annotated[str | None, tyro.conf.arg(metavar="ID")] = None  # run this unit in the foreground (a cluster job)
    print_commands: bool = False  # print one `steerflow sweep --unit ID` command per unfinished unit

    def __call__(self):
        from steerflow.sweep import main as sweep

        code = sweep(self.out, agents=self.agents, tasks=self.tasks, seeds=self.seeds, preset=self.preset,
                     grid=flatten(self.grid), sets=flatten(self.set), train_sets=flatten(self.train_set), jobs=self.jobs,
                     dry_run=self.dry_run, unit=self.unit, print_commands=self.print_commands)
        if code:
            raise SystemExit(code)


Command = Union[
    Annotated[Data, tyro.conf.subcommand("data")],
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[Eval, tyro.conf.subcommand("eval")],
    Annotated[Report, tyro.conf.subcommand("report")],
    Annotated[Sweep, tyro.conf.subcommand("sweep")],
    Annotated[Toy, tyro.conf.subcommand("toy")],
]


def main(argv: list[str] | None = None) -> None:
    command = tyro.cli(Command, args=argv, prog="steerflow",
                       description="Offline RL with latent-steered (LPS) flow policies.")
    try:
        command()
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"steerflow: error: {err}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
