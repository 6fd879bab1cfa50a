"""LPS vs BC-MF on cube-single tasks 1-5, 3 seeds, 50 evaluation episodes (issue 2, item 8), at
that issue's budget: the then-`cpu` preset (2x256, batch 128) for 15K steps on the 1000-episode
dataset, pinned below as `--train-set` so the script still reproduces its committed records. The
CPU protocol that superseded it (100K steps) is benchmarks/protocol/study.py. Each (agent, task, seed) is an independent, resumable run directory; runs go
through a queue of single-threaded processes, one per core (measured faster than vmapped seeds
on this CPU). Finished runs are skipped, killed ones resumed, so re-running the script continues.

    .venv/bin/python benchmarks/cube_single.py [--runs-dir runs/cube_single] [--agents lps,bc-mf]
        [--tasks 1,2,3,4,5] [--seeds 0,1,2] [--preset cpu] [--jobs 2]

Writes benchmarks/results/cube_single_<preset>_<agent>_task<N>.json (one record per agent and
task: agent, task, preset, steps, seeds, final_success, mean, ci95, device, commit), a summary
table benchmarks/results/cube_single_<preset>.md and the learning-curve plot
benchmarks/results/cube_single_<preset>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


ISSUE2_BUDGET = ["steps=15000", "eval_every=5000", "checkpoint_every=5000", "dataset_episodes=1000"]


def run_queue(jobs: list[tuple[str, str, int]], runs_dir: Path, preset: str, parallel: int) -> None:
    env = dict(os.environ, XLA_FLAGS=SINGLE_THREAD, MUJOCO_GL="egl")
    pending = [j for j in jobs if not (runs_dir / _name(*j) / "final.json").exists()]
    print(f"{len(jobs) - len(pending)} of {len(jobs)} runs already finished; {len(pending)} to go", flush=True)
    running: list[tuple[tuple, subprocess.Popen, float]] = []
    done, start = 0, time.time()
    while pending or running:
        while pending and len(running) < parallel:
            agent, task, seed = job = pending.pop(0)
            out = runs_dir / _name(*job)
            resume = (out / "checkpoints" / "latest.msgpack").exists()
            cmd = [sys.executable, "-m", "steerflow.cli", "train", "--agent", agent, "--task", task,
                   "--seeds", str(seed), "--preset", preset, "--out", str(out), "--train-set", "eval_workers=0", *ISSUE2_BUDGET,
                   *(["--resume"] if resume else [])]
            out.mkdir(parents=True, exist_ok=True)
            log = open(out.with_suffix(".log"), "ab")
            running.append((job, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time()))
        time.sleep(2)
        for item in list(running):
            job, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            done += 1
            status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode}), see {_name(*job)}.log"
            elapsed = time.time() - start
            eta = elapsed / done * (len(pending) + len(running))
            print(f"[{done}/{done + len(pending) + len(running)}] {_name(*job)} {status} in {time.time() - t0:.0f}s; "
                  f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)


def _name(agent: str, task: str, seed: int) -> str:
    return f"{agent}_{task}_seed{seed}"


def summarise(jobs, runs_dir: Path, preset: str, agents, tasks, seeds) -> None:
    from steerflow.report import bootstrap_ci, plot_curves, read_curve, stratified_bootstrap_ci

    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    lines = [f"| agent | " + " | ".join(f"task{t}" for t in tasks) + " | domain mean [95% CI] |",
             "|---" * (len(tasks) + 2) + "|"]
    curves = {}
    for agent in agents:
        per_task, cells = [], []
        for t in tasks:
            task = f"cube-single-task{t}"
            finals = [json.loads((runs_dir / _name(agent, task, s) / "final.json").read_text()) for s in seeds]
            success = [f["final_success"][0] for f in finals]
            ci = bootstrap_ci(success)
            record = {"agent": agent, "task": task, "preset": preset, "steps": finals[0]["steps"], "seeds": seeds,
                      "final_success": success, "mean": float(np.mean(success)), "ci95": list(ci),
                      "episodes": finals[0]["episodes"], "device": finals[0]["device"],
                      "commit": finals[0]["commit"], "runs": [str(runs_dir / _name(agent, task, s)) for s in seeds]}
            (results_dir / f"cube_single_{preset}_{agent}_task{t}.json").write_text(json.dumps(record, indent=2) + "\n")
            per_task.append(success)
            cells.append(f"{100 * record['mean']:.0f} [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]")
            for s in seeds:
                curve = read_curve(runs_dir / _name(agent, task, s) / "eval.csv")[s]
                curves.setdefault(agent, {})[(t, s)] = curve
        lo, hi = stratified_bootstrap_ci(per_task)
        mean = float(np.mean([np.mean(x) for x in per_task]))
        lines.append(f"| {agent} | " + " | ".join(cells) + f" | **{100 * mean:.1f}** [{100 * lo:.1f}, {100 * hi:.1f}] |")
    table = "\n".join(lines)
    (results_dir / f"cube_single_{preset}.md").write_text(
        f"Success (%) at the end of training, mean over seeds {seeds} [95% bootstrap CI, 1000 resamples; "
        f"domain column: stratified over tasks], 50 episodes per evaluation, preset `{preset}`.\n\n{table}\n")
    # domain learning curve: average over tasks per seed, then CI over the seed-level averages
    domain_curves = {}
    for agent, by_ts in curves.items():
        for s in seeds:
            steps = sorted(set.intersection(*(set(by_ts[(t, s)]) for t in tasks)))
            domain_curves.setdefault(agent, {})[s] = {st: float(np.mean([by_ts[(t, s)][st] for t in tasks]))
                                                      for st in steps}
    plot_curves(domain_curves, results_dir / f"cube_single_{preset}.png",
                title=f"cube-single tasks {tasks[0]}-{tasks[-1]}, preset {preset}, {len(seeds)} seeds")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/cube_single"))
    parser.add_argument("--agents", default="lps,bc-mf")
    parser.add_argument("--tasks", default="1,2,3,4,5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    agents = args.agents.split(",")
    tasks = [int(t) for t in args.tasks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    # interleave agents so that the slow LPS runs share the cores with the fast BC-MF runs
    jobs = [(a, f"cube-single-task{t}", s) for t in tasks for s in seeds for a in agents]
    if not args.summary_only:
        run_queue(jobs, args.runs_dir, args.preset, args.jobs)
    summarise(jobs, args.runs_dir, args.preset, agents, tasks, seeds)


if __name__ == "__main__":
    main()
