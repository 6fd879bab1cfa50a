"""The CPU-protocol study: every entry of it, in priority order, resumable across
sessions and machines.

    .venv/bin/python benchmarks/protocol/study.py status                 # what is committed, running, left
    .venv/bin/python benchmarks/protocol/study.py run --jobs 2 --commit  # run what is left, in order
    .venv/bin/python benchmarks/protocol/study.py run --only 'tier1' --lps-dir ~/src/LPS --qc-dir ~/src/qc
    .venv/bin/python benchmarks/protocol/study.py run --only long --backend ray --address HOST:6379
    .venv/bin/python benchmarks/protocol/study.py report                 # tables + curves from the records
    taskset -c 1 .venv/bin/python benchmarks/protocol/study.py run --only puzzle --commit  # a second runner, on core 1

An *entry* is one seed of one configuration: (tier, impl, agent, task, seed, overrides). The study
trains each entry as a `steerflow sweep` unit of one seed (`steerflow.sweep.Unit`): `steerflow
train --preset cpu` for impl=steerflow, the reference's own `main.py` through
`benchmarks/parity/run_reference.py` for impl=reference, submitted through the sweep's runner and
backends (`--backend local|ray|slurm`; locally `--jobs` processes at a time, one CPU thread each,
each pinned to a CPU of the runner's affinity set). One seed per unit because a unit's records are
only committed once it finishes, and a session may end at any time: a 3-seed vmapped unit would
lose three seeds' work, and vmapped seeds measured no faster than one process per core on this CPU
(benchmarks/protocol/README.md).

State lives in two places:
* `benchmarks/results/protocol_cpu/units/<id>/` (committed): the records of each finished entry
  (config.json, run_info.json, final.json, eval.csv, metrics.csv, unit.json). An entry with a
  final.json here is done and never re-run, on any machine;
* `runs/protocol_cpu/` (not committed): the sweep directory, `manifest.json` and the live run
  directories `runs/<id>/` with their checkpoints, so a killed entry resumes on the same machine;
  a run directory's lock names the process training it (`status` shows it as running).

Two runners (e.g. one per core, `taskset -c 0 ...` and `taskset -c 1 ...`) leave out the entries
the other is running when they start; an entry the other starts later fails fast in this runner
(its run directory is locked) and is finished by the other.

`--commit` commits each entry's records as it finishes (`git commit --only` that directory, so
nothing else staged is swept in). `steerflow report` reads the committed unit directories as
ordinary run directories; reference runs carry `run.impl = "reference"` and are labelled so.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "protocol_cpu"
RUNS = ROOT / "runs" / "protocol_cpu"
PRESET = "cpu"
RECORD_FILES = ("config.json", "run_info.json", "final.json", "eval.csv", "metrics.csv",
                "wandb_log.jsonl", "reference_eval.csv", "reference_offline_agent.csv")  # the last 3: reference runs
CUBE = "cube-single-task{}"
TUNING_SEEDS = (100, 101)  # choice-gap study: tuning seeds, never the reported seeds 0-2


@dataclass(frozen=True)
class Entry:
    tier: str
    impl: str  # steerflow | reference
    agent: str
    task: str
    seed: int
    overrides: dict = field(default_factory=dict, hash=False)
    name: str = ""  # short name of the overrides (choice-gap, ablation and budget units)
    train: dict = field(default_factory=dict, hash=False)  # TrainConfig overrides (`--train-set`)

    @property
    def id(self) -> str:
        suffix = f"-{self.name}" if self.name else ""
        return f"{self.impl}-{self.agent}{suffix}-{self.task}-s{self.seed}"


def plan() -> list[Entry]:
    """The whole study, highest priority first."""
    out: list[Entry] = []
    sf = lambda tier, agent, task, seed, **kw: Entry(tier, "steerflow", agent, task, seed, **kw)  # noqa: E731
    # tier 1a: parity on the tuning tasks, references beside steerflow, seed by seed
    for seed in (0, 1, 2):
        for t in (2, 4):
            for agent in ("lps", "qc-fql"):
                out += [sf("tier1", agent, CUBE.format(t), seed), Entry("tier1", "reference", agent, CUBE.format(t), seed)]
            out.append(sf("tier1", "bc-mf", CUBE.format(t), seed))
    # tier 1b: the other three tasks, and DSRL-NA on the tuning tasks
    for seed in (0, 1, 2):
        for t in (1, 3, 5):
            out += [sf("tier1", agent, CUBE.format(t), seed) for agent in ("lps", "bc-mf", "qc-fql")]
    out += [sf("tier1", "dsrl-na", CUBE.format(t), seed) for seed in (0, 1, 2) for t in (2, 4)]
    # DSRL-NA sat near BC-MF (10% at 100K on task 2 s0): the authors' re-implementation (in the
    # LPS code) on the same data and budget tells the implementation from the method at this budget
    out += [Entry("dsrl-parity", "reference", "dsrl-na", CUBE.format(t), seed) for seed in (0, 1, 2) for t in (2, 4)]
    # choice gaps with the authors' LPS code (reference/lps_reference_diff.md), together and apart,
    # on the tuning tasks with tuning seeds
    gaps = {
        "default": {},
        "authors": {"critic.aggregate": "min", "clip_actor_chunk": True, "base.weight_p": 0.5,
                    "base.weight_c": 0.001, "base.error_reduce": "mean"},
        "min": {"critic.aggregate": "min"},
        "clip": {"clip_actor_chunk": True},
        "mfweight": {"base.weight_p": 0.5, "base.weight_c": 0.001, "base.error_reduce": "mean"},
        "min-clip": {"critic.aggregate": "min", "clip_actor_chunk": True},
        "zero_r": {"base.rt_sampler": "zero_r"},
    }
    # min-clip after the single fields (the pair the probe did not isolate), and zero_r's
    # second seed after that (its first seed fell to 4% and 2% on the two tasks), so the units
    # that can still change a decision finish first if a session ends
    late = {("min-clip", s) for s in TUNING_SEEDS} | {("zero_r", TUNING_SEEDS[1])}
    out += [sf("gaps", "lps", CUBE.format(t), seed, overrides=o, name=n)
            for seed in TUNING_SEEDS for t in (2, 4) for n, o in gaps.items() if (n, seed) not in late]
    out += [sf("gaps", "lps", CUBE.format(t), seed, overrides=gaps[n], name=n)
            for n, seed in sorted(late, key=lambda k: (k[0] != "min-clip", k[1])) for t in (2, 4)]
    # the authors' default critic depth (4x256 with their 2x256 latent actor) at the protocol's budget
    critic4 = {"critic.hidden": (256, 256, 256, 256)}
    out += [sf("gaps", "lps", CUBE.format(t), seed, overrides=critic4, name="critic4x256")
            for seed in TUNING_SEEDS for t in (2, 4)]
    # tier 2: alpha study (the one that can move: QC-MFQL / QC-FQL's distillation weight), seed 0
    # over the whole grid first, the ends and the default before the interior point, so that a
    # session cut short still leaves a curve from weak to strong regularisation. α = 300 is
    # both agents' default: QC-FQL's point is tier 1's run, QC-MFQL's is its tier-2 run (below),
    # run here under the plain id so that one run serves both studies.
    for seed in (0, 1):
        for alpha in (3, 3000, 300, 30):
            out += [sf("alpha", agent, CUBE.format(t), seed) if alpha == 300 else
                    sf("alpha", agent, CUBE.format(t), seed, overrides={"alpha": alpha}, name=f"alpha{alpha}")
                    for t in (2, 4) for agent in ("qc-mfql", "qc-fql") if not (agent == "qc-fql" and alpha == 300)]
    # tier 2: the other baselines and the ablations of paper §VII on the tuning tasks
    have = {u.id for u in out}
    out += [u for u in (sf("tier2", agent, CUBE.format(t), seed) for seed in (0, 1, 2) for t in (2, 4)
                        for agent in ("lpsd", "qc-mfql", "cfgrl", "bc-fm", "qc-bon"))
            if u.id not in have]
    ablations = {"normal": {"geometry": "normal"}, "truncated": {"geometry": "truncated"},
                 "fm-bptt": {"decoder": "fm-bptt"}, "fm-1step": {"decoder": "fm-1step"},
                 "displacement": {"base.parameterisation": "displacement"}}
    out += [sf("ablations", "lps", CUBE.format(t), seed, overrides=o, name=n)
            for seed in (0, 1, 2) for t in (2, 4) for n, o in ablations.items()]
    out += [sf("puzzle", agent, f"puzzle-3x3-task{t}-sparse", seed) for seed in (0, 1, 2) for t in (2, 4)
            for agent in ("lps", "qc-fql", "bc-mf")]
    # steerflow's LPS sat at 0% on puzzle at 100K: the authors' code on the same data and budget
    # tells a wrong implementation from a budget too short for the method
    out += [Entry("puzzle", "reference", "lps", f"puzzle-3x3-task{t}-sparse", seed) for seed in (0, 1, 2) for t in (2, 4)]
    # LPS sat at 0% on a *dense* scene task 2 where the paper and the authors' code use scene-sparse:
    # the sparse task at the protocol's budget, LPS and QC-FQL seed by seed
    out += [sf("scene-sparse", agent, "scene-task2-sparse", seed) for seed in (0, 1, 2) for agent in ("lps", "qc-fql")]
    # one step beyond the papers: LPS climbing a 10-critic pessimistic critic (mean − 0.5·std, the
    # QPILOTS critic) instead of the mean of two, on the tuning tasks; inference-time selection
    # needs no entry (benchmarks/protocol/selection.py evaluates it on retrained checkpoints)
    out += [sf("beyond", "lps", CUBE.format(t), seed, overrides={"critic": "qpilots"}, name="critic10")
            for seed in TUNING_SEEDS for t in (2, 4)]
    # LPS's curves still rise at 100K where QC-FQL's flatten: do they cross at 300K? Task 2 before
    # task 4, LPS before the baselines, seed by seed (a entry is ~1 h on one core here)
    long = {"steps": 300_000, "eval_every": 50_000}
    out += [sf("long", agent, CUBE.format(t), seed, train=long, name="300k")
            for seed in (0, 1, 2) for t in (2, 4) for agent in ("lps", "qc-fql", "qc-mfql")]
    # QPILOTS beside the baselines of its paper, all on the QPILOTS critic (J = 10,
    # mean − 0.5·std, SiLU) and velocity net (SiLU, Fourier time features). α on the tuning seeds over part of the paper's grid
    # first, then the reported seeds at the default α = 0.3. Measured cost on this CPU (one thread,
    # benchmarks/results/qpilots_speed_cpu.json): hours per entry, so these are GPU-sized.
    out += [sf("qpilots-alpha", agent, CUBE.format(t), seed, overrides={"alpha": a}, name=f"alpha{a}")
            for seed in TUNING_SEEDS for t in (2, 4) for a in (0.1, 0.3, 1.0) for agent in ("qpilots-u", "qpilots-m")]
    qnets = {"qc-fql": {"critic": "qpilots", "flow": "qpilots"}, "qc-bon": {"critic": "qpilots", "flow": "qpilots"},
             "bc-fm": {"flow": "qpilots"}}
    out += [sf("qpilots", agent, CUBE.format(t), seed) for seed in (0, 1, 2) for t in (2, 4)
            for agent in ("qpilots-u", "qpilots-m")]
    out += [sf("qpilots", agent, CUBE.format(t), seed, overrides=o, name="qnets")
            for seed in (0, 1, 2) for t in (2, 4) for agent, o in qnets.items()]
    return out


# --------------------------------------------------------------------------- state

def committed(entry: Entry) -> bool:
    return (RESULTS / "units" / entry.id / "final.json").is_file()


def lock_file(entry: Entry) -> Path:
    """The lock its training process holds: the run directory's own (`steerflow train`), or the one
    beside it (`run_reference.py`, which renames its run directory into place at the end)."""
    from steerflow.runlock import sibling_lock

    run_dir = RUNS / "runs" / entry.id
    return sibling_lock(run_dir) if entry.impl == "reference" else run_dir / ".lock"


def running_pid(entry: Entry) -> int | None:
    """The pid of the process training `entry` (holding either lock `lock_file` may name), or None."""
    from steerflow.runlock import run_dir_holder

    info = run_dir_holder(RUNS / "runs" / entry.id)
    return None if info is None else info.get("pid", -1)


def status(entry: Entry) -> str:
    if committed(entry):
        return "done"
    if running_pid(entry):
        return "running"
    run_dir = RUNS / "runs" / entry.id
    if (run_dir / "final.json").is_file():
        return "finished (not harvested)"
    if (run_dir / "checkpoints" / "latest.msgpack").is_file():
        return "partial"
    return "pending"


def select(all_units: list[Entry], only: list[str] | None) -> list[Entry]:
    if not only:
        return all_units
    return [u for u in all_units if any(u.tier == p or fnmatch.fnmatch(u.id, p) for p in only)]


# --------------------------------------------------------------------------- running

def _train_config(task: str, train: dict | None = None):
    from steerflow.train import RunSpec, resolve

    return resolve(RunSpec(agent="bc-mf", task=task, seeds=[0], preset=PRESET, train_overrides=dict(train or {})))[2]


def dataset_dir(task: str, train: dict | None = None) -> Path:
    """The cached dataset the protocol's units on `task` (with TrainConfig overrides `train`) read."""
    from steerflow.data.cache import data_root
    from steerflow.data.ogbench_gen import cache_key
    from steerflow.data.tasks import parse_task

    tc = _train_config(task, train)
    return data_root() / cache_key(parse_task(task).domain, tc.dataset_episodes, tc.dataset_seed,
                                   tc.dataset_episode_steps)


def ensure_dataset(task: str, train: dict | None = None) -> Path:
    """Generate the protocol's dataset once, with both cores, before any unit starts."""
    from steerflow.data.tasks import load_task_dataset

    tc = _train_config(task, train)
    load_task_dataset(task, episodes=tc.dataset_episodes, seed=tc.dataset_seed,
                      episode_steps=tc.dataset_episode_steps, workers=os.cpu_count() or 1)
    return dataset_dir(task, train)


def sweep_unit(entry: Entry, refs: dict[str, Path]):
    """The `steerflow.sweep.Unit` that trains `entry`: its seed into runs/<id> of the study's sweep
    directory (RUNS), its log in logs/<id>.log."""
    from steerflow.sweep import Unit
    from steerflow.train import RunSpec, resolve

    spec = RunSpec(agent=entry.agent, task=entry.task, seeds=[entry.seed], preset=PRESET,
                   overrides=dict(entry.overrides), train_overrides=dict(entry.train))
    _, _, tc = resolve(spec)
    argv = []
    if entry.impl == "reference":
        argv = [str(ROOT / ".venv-ref" / "bin" / "python"), str(ROOT / "benchmarks" / "parity" / "run_reference.py"),
                "--impl", entry.agent, "--reference-dir", str(refs[entry.agent]), "--task", entry.task,
                "--seed", str(entry.seed), "--dataset-dir", str(dataset_dir(entry.task, entry.train)),
                "--out", str(RUNS / "runs" / entry.id), "--preset", PRESET]
    return Unit(id=entry.id, agent=entry.agent, task=entry.task, seeds=[entry.seed], preset=PRESET,
                overrides=spec.overrides, train_overrides=spec.train_overrides, steps=tc.steps, argv=argv)


def harvest(entry: Entry, commit: bool) -> bool:
    """Copy a finished entry's records into the committed results (atomically) and commit them."""
    src = RUNS / "runs" / entry.id
    if not (src / "final.json").is_file():
        return False
    dst = RESULTS / "units" / entry.id
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".tmp-{dst.name}-"))  # this writer's own
    for name in RECORD_FILES:  # what reports and pages read (evals/ repeats eval.csv: left out)
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    (tmp / "unit.json").write_text(json.dumps({"tier": entry.tier, "impl": entry.impl, "agent": entry.agent,
                                               "task": entry.task, "seed": entry.seed, "overrides": entry.overrides,
                                               "name": entry.name, "train": entry.train}, indent=1) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    if commit:
        final = json.loads((dst / "final.json").read_text())
        commit_records(dst, f"protocol_cpu: {entry.id} finished, success {final['mean']:.2f} "
                            f"({final.get('device', '?')})")
    return True


def commit_records(path: Path, msg: str) -> None:
    """`git commit --only path`, retried: another runner's commit may hold the index lock for a moment."""
    for attempt in range(5):
        subprocess.run(["git", "-C", str(ROOT), "add", str(path)], capture_output=True)
        r = subprocess.run(["git", "-C", str(ROOT), "commit", "-q", "-m", msg, "--only", str(path)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(2 + 3 * attempt)
    print(f"[study] could not commit {path}: {r.stderr.strip()}", file=sys.stderr)


def harvest_finished(commit: bool) -> None:
    """Harvest every entry that finished outside a runner (started by hand, or a runner that died)."""
    for entry in plan():
        if status(entry) == "finished (not harvested)":
            harvest(entry, commit)
            print(f"[study] harvested {entry.id}", flush=True)


def run(args) -> int:
    """Run what is left of the selection through the sweep's runner on `--backend`, harvesting (and
    with --commit committing) each entry's records as it finishes."""
    from steerflow.backends import UnitResources
    from steerflow.sweep import merge_manifest, run_backend
    from steerflow.train import single_thread_env

    refs = {"lps": args.lps_dir, "dsrl-na": args.lps_dir, "qc-fql": args.qc_dir}
    harvest_finished(args.commit)
    todo = [e for e in select(plan(), args.only) if status(e) in ("pending", "partial")
            and (e.impl != "reference" or refs.get(e.agent) is not None)]  # no checkout: skipped
    if args.max_units:
        todo = todo[: args.max_units]
    print(f"[study] {len(todo)} entries to run on {args.backend}, {args.jobs} at a time")
    if not todo:
        return 0
    for task, train in {(e.task, json.dumps(e.train, sort_keys=True)): None for e in todo}:
        ensure_dataset(task, json.loads(train))
    os.environ.update(single_thread_env())  # one XLA thread per unit, as every committed unit ran
    os.environ.setdefault("MUJOCO_GL", "egl")
    units = [sweep_unit(e, refs) for e in todo]
    merge_manifest(RUNS, units)
    entries = {e.id: e for e in todo}
    resources = UnitResources(gpus=args.unit_gpus, timeout_min=args.timeout_min, partition=args.partition)
    failed = run_backend(args.backend, RUNS, units, resources, jobs=args.jobs, address=args.address,
                         slurm_cluster=args.slurm_cluster, on_done=lambda u: harvest(entries[u.id], args.commit))
    for uid, error in failed.items():
        print(f"[study] FAILED {uid}: {error}", flush=True)
    return 1 if failed else 0


def show_status(args) -> int:
    rows = [(u, status(u)) for u in select(plan(), args.only)]
    counts: dict[str, dict[str, int]] = {}
    for u, s in rows:
        counts.setdefault(u.tier, {}).setdefault(s, 0)
        counts[u.tier][s] += 1
    for tier, c in counts.items():
        print(f"{tier:10s} " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    if args.verbose:
        for u, s in rows:
            print(f"  {s:26s} {u.id}")
    return 0


def report(args) -> int:
    from steerflow.report import build_report

    dirs = sorted(p for p in (RESULTS / "units").iterdir() if (p / "final.json").is_file()
                  and json.loads((p / "unit.json").read_text())["tier"] in args.tiers)
    if not dirs:
        raise SystemExit(f"no finished units of tiers {args.tiers} under {RESULTS / 'units'}")
    build_report([str(d) for d in dirs], str(args.out))
    print(f"report of {len(dirs)} entry(s) in {args.out}")
    return 0


def table(args) -> int:
    """Markdown: every committed entry of the given tiers, success (%) at each evaluation step."""
    import csv

    print("| task | seed | method | 25K | 50K | 75K | 100K |")
    print("|---|---|---|---|---|---|---|")
    for entry in sorted((u for u in plan() if u.tier in args.tiers and committed(u)),
                       key=lambda u: (u.task, u.seed, u.agent, u.impl)):
        d = RESULTS / "units" / entry.id
        with open(d / "eval.csv") as f:
            curve = {int(r["step"]): float(r["success"]) for r in csv.DictReader(f)}
        label = entry.agent + (" [reference]" if entry.impl == "reference" else "") + (f" {entry.name}" if entry.name else "")
        cells = " | ".join(f"{100 * curve[s]:.0f}" if s in curve else "–" for s in (25_000, 50_000, 75_000, 100_000))
        print(f"| {entry.task} | {entry.seed} | {label} | {cells} |")
    return 0


def resolved_alpha(entry: Entry) -> float:
    """The α a QC-FQL / QC-MFQL entry trains with: its override, else the agent's default."""
    from steerflow.train import RunSpec, resolve

    _, config, _ = resolve(RunSpec(agent=entry.agent, task=entry.task, seeds=[entry.seed], preset=PRESET,
                                   overrides=dict(entry.overrides)))
    return float(config.alpha)


def alpha_table(args) -> int:
    """Markdown: final success of QC-MFQL / QC-FQL at each α of tier `alpha` (with the α = 300
    runs of tier 1 and tier 2), beside LPS's single run on the same tasks and seeds, and a plot.
    The critic's mean Q and the distillation loss at the last log step say why a point is low."""
    import csv

    cells: dict[tuple[str, float | None], dict[tuple[str, int], float]] = {}
    last_logs: dict[tuple[str, float | None], list[dict]] = {}
    for entry in plan():
        if entry.impl != "steerflow" or not committed(entry) or entry.seed not in args.seeds \
                or entry.task not in (CUBE.format(2), CUBE.format(4)):
            continue
        if entry.agent in ("qc-mfql", "qc-fql") and set(entry.overrides) <= {"alpha"}:
            key = (entry.agent, resolved_alpha(entry))
        elif entry.agent == "lps" and entry.tier == "tier1":
            key = ("lps", None)  # no α to tune: its base-loss weight is inert under Adam (README, "α")
        else:
            continue
        rec = json.loads((RESULTS / "units" / entry.id / "final.json").read_text())
        cells.setdefault(key, {})[(entry.task, entry.seed)] = 100 * rec["mean"]
        if (metrics := RESULTS / "units" / entry.id / "metrics.csv").is_file():
            with open(metrics) as f:
                last_logs.setdefault(key, []).append(list(csv.DictReader(f))[-1])
    cols = [(CUBE.format(t), s) for t in (2, 4) for s in args.seeds]
    print("| agent | α | " + " | ".join(f"task {c[0][-1]}, s{c[1]}" for c in cols) + " | mean | Q | distill loss |")
    print("|---|---|" + "---|" * (len(cols) + 3))

    def mean_logged(key, name):
        values = [float(r[name]) for r in last_logs.get(key, []) if r.get(name)]
        return f"{sum(values) / len(values):.3g}" if values else "–"

    for (agent, alpha), row in sorted(cells.items(), key=lambda kv: (kv[0][0] == "lps", kv[0][0], kv[0][1] or 0)):
        values = [row[c] for c in cols if c in row]
        shown = "–" if alpha is None else f"{alpha:g}"
        print(f"| {agent} | {shown} | " + " | ".join(f"{row[c]:.0f}" if c in row else "–" for c in cols)
              + f" | {sum(values) / len(values):.1f} ({len(values)}) | {mean_logged((agent, alpha), 'q_mean')}"
              f" | {mean_logged((agent, alpha), 'distill_loss')} |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.4))
        for agent in ("qc-fql", "qc-mfql"):
            pts = sorted((a, sum(r.values()) / len(r)) for (g, a), r in cells.items() if g == agent and a is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=agent)
        if ("lps", None) in cells:
            lps = cells[("lps", None)]
            ax.axhline(sum(lps.values()) / len(lps), color="k", ls="--", label="lps (no α to tune)")
        ax.set(xscale="log", xlabel="α (distillation weight)", ylabel="final success (%)",
               title=f"cube-single tasks 2 and 4, seed(s) {','.join(map(str, args.seeds))}, 100K steps")
        ax.set_ylim(-2, 105)
        ax.legend(loc="upper center", ncol=3, fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")
    return 0


def compare(args) -> int:
    """A finished run's success next to the committed protocol results on its task (`make run`)."""
    import numpy as np

    final = json.loads((args.run / "final.json").read_text())
    task = final["task"]
    print(f"\n{final['agent']} on {task}, {final['steps']} steps: success {100 * final['mean']:.0f}% "
          f"({final['episodes']} episodes, seeds {final['seeds']})")
    rows: dict[str, list[float]] = {}
    for entry in plan():
        if entry.task == task and entry.tier == "tier1" and committed(entry):
            rec = json.loads((RESULTS / "units" / entry.id / "final.json").read_text())
            if rec["steps"] == final["steps"]:
                rows.setdefault(f"{entry.agent}{' [reference]' if entry.impl == 'reference' else ''}", []).append(rec["mean"])
    if not rows:
        print(f"no committed protocol results for {task} at {final['steps']} steps to compare with")
        return 0
    print(f"committed CPU-protocol results on {task} (benchmarks/results/protocol_cpu, mean over seeds):")
    for label, values in sorted(rows.items()):
        print(f"  {label:20s} {100 * np.mean(values):5.1f}%  ({len(values)} seed(s): "
              f"{', '.join(f'{100 * v:.0f}' for v in values)})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status")
    s.add_argument("--only", nargs="*")
    s.add_argument("-v", "--verbose", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--jobs", type=int, default=1, help="local backend: units at a time, each pinned to a CPU")
    r.add_argument("--only", nargs="*", help="tiers or fnmatch patterns of entry ids")
    r.add_argument("--backend", choices=("local", "ray", "slurm"), default="local",
                   help="where the units run (steerflow sweep's backends)")
    r.add_argument("--address", default="", help="ray: the cluster's address (default: a local Ray)")
    r.add_argument("--slurm-cluster", default="slurm", help="slurm: submitit's cluster (`local`: no SLURM)")
    r.add_argument("--unit-gpus", type=float, default=0.0, help="ray/slurm: GPUs per unit")
    r.add_argument("--timeout-min", type=int, default=24 * 60, help="slurm: time limit per unit")
    r.add_argument("--partition", default="", help="slurm: partition")
    r.add_argument("--max-units", type=int, default=0)
    r.add_argument("--commit", action="store_true", help="git-commit each entry's records as it finishes")
    r.add_argument("--lps-dir", type=Path, default=os.environ.get("STEERFLOW_LPS_DIR"),
                   help="clone of jellyho/LPS (reference units are skipped without it)")
    r.add_argument("--qc-dir", type=Path, default=os.environ.get("STEERFLOW_QC_DIR"),
                   help="clone of ColinQiyangLi/qc")
    h = sub.add_parser("harvest", help="copy (and commit) the records of units finished outside a runner")
    h.add_argument("--commit", action="store_true")
    c = sub.add_parser("compare", help="a finished run next to the committed results on its task")
    c.add_argument("run", type=Path)
    t = sub.add_parser("table", help="markdown table of the committed units' curves")
    t.add_argument("--tiers", nargs="*", default=["tier1"])
    a = sub.add_parser("alpha", help="markdown table (and plot) of the α study")
    a.add_argument("--plot", type=Path, help="write success against α to this PNG")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the study's seeds to show (0 1)")
    g = sub.add_parser("report")
    g.add_argument("--tiers", nargs="*", default=["tier1"])
    g.add_argument("--out", type=Path, default=RESULTS / "report")
    args = p.parse_args(argv)
    if args.cmd == "run" and args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.cmd == "harvest":
        harvest_finished(args.commit)
        return 0
    return {"status": show_status, "run": run, "report": report, "compare": compare, "table": table,
            "alpha": alpha_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
