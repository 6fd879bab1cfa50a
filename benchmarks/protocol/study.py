"""The CPU-protocol study: every unit of it, in priority order, resumable across
sessions and machines.

    .venv/bin/python benchmarks/protocol/study.py status                 # what is committed, running, left
    .venv/bin/python benchmarks/protocol/study.py run --jobs 2 --commit  # run what is left, in order
    .venv/bin/python benchmarks/protocol/study.py run --only 'tier1' --lps-dir ~/src/LPS --qc-dir ~/src/qc
    .venv/bin/python benchmarks/protocol/study.py report                 # tables + curves from the records
    taskset -c 1 .venv/bin/python benchmarks/protocol/study.py run --only puzzle --commit  # a second runner, on core 1

A runner's `--jobs` counts the units running on its own CPUs (its affinity set), whoever started
them, so two runners pinned to different cores (`taskset -c 0 ...`, `taskset -c 1 ...`) each keep
their core busy with their own selection of units.

A *unit* is one seed of one configuration: (impl, agent, task, seed, overrides), trained by one
single-threaded process (`steerflow train --preset cpu` for impl=steerflow; the reference's own
`main.py` through `benchmarks/parity/run_reference.py` for impl=reference). One seed per unit
because a unit's records are only committed once it finishes, and a session may end at any
time: a 3-seed vmapped unit would lose three seeds' work, and vmapped seeds measured no faster
than one process per core on this CPU (benchmarks/protocol/README.md).

State lives in two places:
* `benchmarks/results/protocol_cpu/units/<id>/` (committed): the records of each finished unit
  (config.json, run_info.json, final.json, eval.csv, metrics.csv). A unit with a
  final.json here is done and never re-run, on any machine;
* `runs/protocol_cpu/runs/<id>/` (not committed): the live run directory with its checkpoints, so
  a killed unit resumes on the same machine (`--resume`); `<id>.lock` holds the pid running it.

`--commit` commits each unit's records as it finishes (`git commit --only` that directory, so
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
class Unit:
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


def units() -> list[Unit]:
    """The whole study, highest priority first."""
    out: list[Unit] = []
    sf = lambda tier, agent, task, seed, **kw: Unit(tier, "steerflow", agent, task, seed, **kw)  # noqa: E731
    # tier 1a: parity on the tuning tasks, references beside steerflow, seed by seed
    for seed in (0, 1, 2):
        for t in (2, 4):
            for agent in ("lps", "qc-fql"):
                out += [sf("tier1", agent, CUBE.format(t), seed), Unit("tier1", "reference", agent, CUBE.format(t), seed)]
            out.append(sf("tier1", "bc-mf", CUBE.format(t), seed))
    # tier 1b: the other three tasks, and DSRL-NA on the tuning tasks
    for seed in (0, 1, 2):
        for t in (1, 3, 5):
            out += [sf("tier1", agent, CUBE.format(t), seed) for agent in ("lps", "bc-mf", "qc-fql")]
    out += [sf("tier1", "dsrl-na", CUBE.format(t), seed) for seed in (0, 1, 2) for t in (2, 4)]
    # DSRL-NA sat near BC-MF (10% at 100K on task 2 s0): the authors' re-implementation (in the
    # LPS code) on the same data and budget tells the implementation from the method at this budget
    out += [Unit("dsrl-parity", "reference", "dsrl-na", CUBE.format(t), seed) for seed in (0, 1, 2) for t in (2, 4)]
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
    out += [Unit("puzzle", "reference", "lps", f"puzzle-3x3-task{t}-sparse", seed) for seed in (0, 1, 2) for t in (2, 4)]
    # LPS sat at 0% on a *dense* scene task 2 where the paper and the authors' code use scene-sparse:
    # the sparse task at the protocol's budget, LPS and QC-FQL seed by seed
    out += [sf("scene-sparse", agent, "scene-task2-sparse", seed) for seed in (0, 1, 2) for agent in ("lps", "qc-fql")]
    # one step beyond the papers: LPS climbing a 10-critic pessimistic critic (mean − 0.5·std, the
    # QPILOTS critic) instead of the mean of two, on the tuning tasks; inference-time selection
    # needs no unit (benchmarks/protocol/selection.py evaluates it on retrained checkpoints)
    out += [sf("beyond", "lps", CUBE.format(t), seed, overrides={"critic": "qpilots"}, name="critic10")
            for seed in TUNING_SEEDS for t in (2, 4)]
    # LPS's curves still rise at 100K where QC-FQL's flatten: do they cross at 300K? Task 2 before
    # task 4, LPS before the baselines, seed by seed (a unit is ~1 h on one core here)
    long = {"steps": 300_000, "eval_every": 50_000}
    out += [sf("long", agent, CUBE.format(t), seed, train=long, name="300k")
            for seed in (0, 1, 2) for t in (2, 4) for agent in ("lps", "qc-fql", "qc-mfql")]
    # QPILOTS beside the baselines of its paper, all on the QPILOTS critic (J = 10,
    # mean − 0.5·std, SiLU) and velocity net (SiLU, Fourier time features). α on the tuning seeds over part of the paper's grid
    # first, then the reported seeds at the default α = 0.3. Measured cost on this CPU (one thread,
    # benchmarks/results/qpilots_speed_cpu.json): hours per unit, so these are GPU-sized.
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

def committed(unit: Unit) -> bool:
    return (RESULTS / "units" / unit.id / "final.json").is_file()


def running_pid(unit: Unit) -> int | None:
    lock = RUNS / "runs" / f"{unit.id}.lock"
    try:
        pid = int(lock.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _affinity(pid: int) -> set[int]:
    try:
        return os.sched_getaffinity(pid)
    except OSError:  # it ended meanwhile
        return set()


def running_units() -> dict[Unit, set[int]]:
    """Every unit some process is running now (by its lock), with the CPUs that process may use."""
    return {u: _affinity(pid) for u in units() if (pid := running_pid(u))}


def running_on(cores: set[int]) -> list[Unit]:
    """The running units that compete for `cores`: a runner's --jobs counts these, whoever started
    them, so runners pinned to different cores each keep their own core busy."""
    return [u for u, a in running_units().items() if a & cores]


def status(unit: Unit) -> str:
    if committed(unit):
        return "done"
    if running_pid(unit):
        return "running"
    run_dir = RUNS / "runs" / unit.id
    if (run_dir / "final.json").is_file():
        return "finished (not harvested)"
    if (run_dir / "checkpoints" / "latest.msgpack").is_file():
        return "partial"
    return "pending"


def select(all_units: list[Unit], only: list[str] | None) -> list[Unit]:
    if not only:
        return all_units
    return [u for u in all_units if any(u.tier == p or fnmatch.fnmatch(u.id, p) for p in only)]


# --------------------------------------------------------------------------- running

def dataset_dir(task: str) -> Path:
    from steerflow.data.cache import data_root
    from steerflow.data.ogbench_gen import cache_key
    from steerflow.data.tasks import parse_task
    from steerflow.train import RunSpec, resolve

    _, _, tc = resolve(RunSpec(agent="bc-mf", task=task, seeds=[0], preset=PRESET))
    return data_root() / cache_key(parse_task(task).domain, tc.dataset_episodes, tc.dataset_seed,
                                   tc.dataset_episode_steps)


def ensure_dataset(task: str) -> Path:
    """Generate the protocol's dataset once, with both cores, before any unit starts."""
    from steerflow.data.tasks import load_task_dataset
    from steerflow.train import RunSpec, resolve

    _, _, tc = resolve(RunSpec(agent="bc-mf", task=task, seeds=[0], preset=PRESET))
    load_task_dataset(task, episodes=tc.dataset_episodes, seed=tc.dataset_seed,
                      episode_steps=tc.dataset_episode_steps, workers=os.cpu_count() or 1)
    return dataset_dir(task)


def command(unit: Unit, refs: dict[str, Path]) -> list[str]:
    out = RUNS / "runs" / unit.id
    if unit.impl == "reference":
        ref_python = ROOT / ".venv-ref" / "bin" / "python"
        return [str(ref_python), str(ROOT / "benchmarks" / "parity" / "run_reference.py"), "--impl", unit.agent,
                "--reference-dir", str(refs[unit.agent]), "--task", unit.task, "--seed", str(unit.seed),
                "--dataset-dir", str(dataset_dir(unit.task)), "--out", str(out), "--preset", PRESET]
    from steerflow.train import RunSpec, train_command

    return train_command(RunSpec(agent=unit.agent, task=unit.task, seeds=[unit.seed], preset=PRESET,
                                 overrides=dict(unit.overrides), train_overrides=dict(unit.train)),
                         out, resume=True)


def harvest(unit: Unit, commit: bool) -> bool:
    """Copy a finished unit's records into the committed results (atomically) and commit them."""
    src = RUNS / "runs" / unit.id
    if not (src / "final.json").is_file():
        return False
    dst = RESULTS / "units" / unit.id
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".tmp-{dst.name}-"))  # this writer's own
    for name in RECORD_FILES:  # what reports and pages read (evals/ repeats eval.csv: left out)
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    (tmp / "unit.json").write_text(json.dumps({"tier": unit.tier, "impl": unit.impl, "agent": unit.agent,
                                               "task": unit.task, "seed": unit.seed, "overrides": unit.overrides,
                                               "name": unit.name, "train": unit.train}, indent=1) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    if commit:
        final = json.loads((dst / "final.json").read_text())
        msg = (f"protocol_cpu: {unit.id} finished, success {final['mean']:.2f} "
               f"({final.get('device', '?')})")
        for attempt in range(5):  # another commit may hold the index lock for a moment
            subprocess.run(["git", "-C", str(ROOT), "add", str(dst)], capture_output=True)
            r = subprocess.run(["git", "-C", str(ROOT), "commit", "-q", "-m", msg, "--only", str(dst)],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(2 + 3 * attempt)
        else:
            print(f"[study] could not commit {dst}: {r.stderr.strip()}", file=sys.stderr)
    return True


def harvest_finished(commit: bool) -> None:
    """Harvest every unit that finished outside a runner (started by hand, or a runner that died)."""
    for unit in units():
        if status(unit) == "finished (not harvested)":
            harvest(unit, commit)
            print(f"[study] harvested {unit.id}", flush=True)


def run(args) -> int:
    from steerflow.train import free_core, pinned_to, single_thread_env

    refs = {"lps": args.lps_dir, "dsrl-na": args.lps_dir, "qc-fql": args.qc_dir}
    harvest_finished(args.commit)
    todo = []
    for unit in select(units(), args.only):
        state = status(unit)
        if state in ("pending", "partial"):
            if unit.impl == "reference" and refs.get(unit.agent) is None:
                continue  # no checkout of that reference given
            todo.append(unit)
    if args.max_units:
        todo = todo[: args.max_units]
    print(f"[study] {len(todo)} unit(s) to run, {args.jobs} at a time")
    for task in sorted({u.task for u in todo}):
        ensure_dataset(task)
    env = single_thread_env()
    env.setdefault("MUJOCO_GL", "egl")
    pending, live = list(todo), {}

    mine = os.sched_getaffinity(0)  # `taskset -c 1 study.py run ...` keeps this runner on core 1

    def others_running() -> int:  # units started by another runner or by hand on this runner's cores
        return len([u for u in running_on(mine) if u not in live])

    def others_cores() -> set[int]:  # the single CPUs those others are pinned to
        return {c for u, a in running_units().items() if u not in live and len(a) == 1 for c in a}

    while pending or live:
        while pending and len(live) + others_running() < args.jobs:
            unit = pending.pop(0)
            if status(unit) in ("done", "running"):  # another runner took it meanwhile
                continue
            log = RUNS / "logs" / f"{unit.id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            (RUNS / "runs").mkdir(parents=True, exist_ok=True)
            logf = open(log, "ab")
            core = free_core({c for *_, c in live.values()} | others_cores())
            proc = subprocess.Popen(command(unit, refs), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                    cwd=ROOT, start_new_session=True, preexec_fn=pinned_to(core))
            (RUNS / "runs" / f"{unit.id}.lock").write_text(f"{proc.pid}\n")
            live[unit] = (proc, logf, time.time(), core)
            print(f"[study] {time.strftime('%H:%M:%S')} start {unit.id} (pid {proc.pid}, log {log})", flush=True)
        time.sleep(5)
        if int(time.time()) % 60 < 5:
            harvest_finished(args.commit)
        for unit, (proc, logf, t0, _) in list(live.items()):
            if proc.poll() is None:
                continue
            logf.close()
            del live[unit]
            (RUNS / "runs" / f"{unit.id}.lock").unlink(missing_ok=True)
            ok = proc.returncode == 0 and harvest(unit, args.commit)
            print(f"[study] {time.strftime('%H:%M:%S')} {'done' if ok else 'FAILED'} {unit.id} "
                  f"in {(time.time() - t0) / 60:.1f} min (exit {proc.returncode})", flush=True)
    return 0


def show_status(args) -> int:
    rows = [(u, status(u)) for u in select(units(), args.only)]
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
    print(f"report of {len(dirs)} unit(s) in {args.out}")
    return 0


def table(args) -> int:
    """Markdown: every committed unit of the given tiers, success (%) at each evaluation step."""
    import csv

    print("| task | seed | method | 25K | 50K | 75K | 100K |")
    print("|---|---|---|---|---|---|---|")
    for unit in sorted((u for u in units() if u.tier in args.tiers and committed(u)),
                       key=lambda u: (u.task, u.seed, u.agent, u.impl)):
        d = RESULTS / "units" / unit.id
        with open(d / "eval.csv") as f:
            curve = {int(r["step"]): float(r["success"]) for r in csv.DictReader(f)}
        label = unit.agent + (" [reference]" if unit.impl == "reference" else "") + (f" {unit.name}" if unit.name else "")
        cells = " | ".join(f"{100 * curve[s]:.0f}" if s in curve else "–" for s in (25_000, 50_000, 75_000, 100_000))
        print(f"| {unit.task} | {unit.seed} | {label} | {cells} |")
    return 0


def resolved_alpha(unit: Unit) -> float:
    """The α a QC-FQL / QC-MFQL unit trains with: its override, else the agent's default."""
    from steerflow.train import RunSpec, resolve

    _, config, _ = resolve(RunSpec(agent=unit.agent, task=unit.task, seeds=[unit.seed], preset=PRESET,
                                   overrides=dict(unit.overrides)))
    return float(config.alpha)


def alpha_table(args) -> int:
    """Markdown: final success of QC-MFQL / QC-FQL at each α of tier `alpha` (with the α = 300
    runs of tier 1 and tier 2), beside LPS's single run on the same tasks and seeds, and a plot.
    The critic's mean Q and the distillation loss at the last log step say why a point is low."""
    import csv

    cells: dict[tuple[str, float | None], dict[tuple[str, int], float]] = {}
    last_logs: dict[tuple[str, float | None], list[dict]] = {}
    for unit in units():
        if unit.impl != "steerflow" or not committed(unit) or unit.seed not in args.seeds \
                or unit.task not in (CUBE.format(2), CUBE.format(4)):
            continue
        if unit.agent in ("qc-mfql", "qc-fql") and set(unit.overrides) <= {"alpha"}:
            key = (unit.agent, resolved_alpha(unit))
        elif unit.agent == "lps" and unit.tier == "tier1":
            key = ("lps", None)  # no α to tune: its base-loss weight is inert under Adam (README, "α")
        else:
            continue
        rec = json.loads((RESULTS / "units" / unit.id / "final.json").read_text())
        cells.setdefault(key, {})[(unit.task, unit.seed)] = 100 * rec["mean"]
        if (metrics := RESULTS / "units" / unit.id / "metrics.csv").is_file():
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
    for unit in units():
        if unit.task == task and unit.tier == "tier1" and committed(unit):
            rec = json.loads((RESULTS / "units" / unit.id / "final.json").read_text())
            if rec["steps"] == final["steps"]:
                rows.setdefault(f"{unit.agent}{' [reference]' if unit.impl == 'reference' else ''}", []).append(rec["mean"])
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
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--only", nargs="*", help="tiers or fnmatch patterns of unit ids")
    r.add_argument("--max-units", type=int, default=0)
    r.add_argument("--commit", action="store_true", help="git-commit each unit's records as it finishes")
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
