"""Training steps/s of steerflow beside the reference implementations, in one window.

    .venv/bin/python benchmarks/parity/speed.py --lps-dir ~/src/LPS --qc-dir ~/src/qc [--steps 8000] [--pause-study]

For LPS and for QC-FQL, at the CPU protocol's sizes (2x256 nets, batch 128, cube-single task 2):
* `together`: steerflow's run and the reference's run start at the same time, one single-threaded
  process each, each pinned to a CPU of its own (the way the study runs them), so both see the
  same machine; `together_unpinned`: the same, left to the scheduler;
* `alone`: each by itself, one single-threaded XLA process left free to use both CPUs (its Python
  thread overlaps the XLA thread), nothing else running.
steps/s is the median over log windows (every 1000 steps) after the first two (compilation, warm-up),
from each run's metrics.csv; the single evaluation at the end (5 episodes) is outside those windows.
`--pause-study` stops the protocol study's unit processes (SIGSTOP) for the duration and resumes
them after, so the figures are not shared with a background study. Writes
benchmarks/results/parity_speed_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ("alone", "together", "together_unpinned")
sys.path[:0] = [str(ROOT / "benchmarks" / "protocol"), str(ROOT / "benchmarks" / "parity")]
from run_reference import reference_commit  # noqa: E402


def median_sps(metrics_csv: Path) -> float:
    with open(metrics_csv) as f:
        values = [float(r["steps_per_s"]) for r in csv.DictReader(f) if r["steps_per_s"]]
    return statistics.median(values[2:] if len(values) > 4 else values)


def commands(agent: str, ref_dir: Path, out: Path, steps: int, dataset: Path) -> dict[str, list[str]]:
    from steerflow.train import RunSpec, train_command

    train_set = {"steps": steps, "eval_every": steps, "checkpoint_every": steps, "eval_episodes": 5}
    ours = train_command(RunSpec(agent=agent, task="cube-single-task2", seeds=[0], preset="cpu",
                                 train_overrides={k: str(v) for k, v in train_set.items()}), out / "steerflow")
    ref = [str(ROOT / ".venv-ref" / "bin" / "python"), str(ROOT / "benchmarks" / "parity" / "run_reference.py"),
           "--impl", agent, "--reference-dir", str(ref_dir), "--task", "cube-single-task2", "--seed", "0",
           "--dataset-dir", str(dataset), "--out", str(out / "reference"), "--steps", str(steps),
           "--eval-every", str(steps), "--eval-episodes", "5"]
    return {"steerflow": ours, "reference": ref}


def run_all(cmds: dict[str, list[str]], env: dict, pin: bool = True) -> None:
    """Run the commands at once, each pinned to a CPU of its own (as the study runs its units)."""
    from steerflow.train import free_core, pinned_to

    procs, cores = {}, set()
    for name, cmd in cmds.items():
        core = free_core(cores) if pin else None
        cores.add(core)
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                       preexec_fn=pinned_to(core))
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} run failed: {' '.join(cmds[name])}")


@contextmanager
def study_paused(enabled: bool):
    import study

    pids = [pid for u in study.plan() if (pid := study.running_pid(u))] if enabled else []
    for pid in pids:
        os.killpg(os.getpgid(pid), signal.SIGSTOP)
    try:
        yield len(pids)
    finally:
        for pid in pids:
            os.killpg(os.getpgid(pid), signal.SIGCONT)


def main(argv=None) -> int:
    import study
    from steerflow.runinfo import device_description, git_commit
    from steerflow.train import single_thread_env

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lps-dir", type=Path, required=True)
    p.add_argument("--qc-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--pause-study", action="store_true")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = p.parse_args(argv)
    env = dict(single_thread_env(), MUJOCO_GL="egl")
    dataset = study.ensure_dataset("cube-single-task2")
    rows = []
    with study_paused(args.pause_study) as paused, tempfile.TemporaryDirectory() as tmp:
        for agent, ref_dir in (("lps", args.lps_dir), ("qc-fql", args.qc_dir)):
            row = {"agent": agent}
            for mode in args.modes:
                out = Path(tmp) / agent / mode
                cmds = commands(agent, ref_dir, out, args.steps, dataset)
                start = time.time()
                if mode.startswith("together"):
                    run_all(cmds, env, pin=mode == "together")
                else:  # alone, unpinned: a lone process may use the other CPU for its Python side
                    for name, cmd in cmds.items():
                        run_all({name: cmd}, env, pin=False)
                for name in cmds:
                    row[f"{name}_{mode}"] = round(median_sps(out / name / "metrics.csv"), 1)
                row[f"ratio_{mode}"] = round(row[f"steerflow_{mode}"] / row[f"reference_{mode}"], 2)
                print(json.dumps(row), f"({time.time() - start:.0f} s)", flush=True)
            rows.append(row)
    result = {"device": device_description(), "commit": git_commit(), "steps": args.steps, "study_units_paused": paused,
              "sizes": "2x256 nets, batch 128 (CPU protocol), cube-single-task2, one single-threaded process per run",
              "lps_reference": reference_commit(args.lps_dir), "qc_reference": reference_commit(args.qc_dir), "rows": rows}
    path = ROOT / "benchmarks" / "results" / "parity_speed_cpu.json"
    if path.exists() and set(args.modes) != set(MODES):  # a partial re-measurement updates its modes only
        old = {r["agent"]: r for r in json.loads(path.read_text())["rows"]}
        rows = [{**old.get(r["agent"], {}), **r} for r in rows]
        result["rows"] = rows
    path.write_text(json.dumps(result, indent=1) + "\n")
    modes = [m for m in MODES if all(f"ratio_{m}" in r for r in rows)]
    print("| agent | " + " | ".join(f"steerflow / reference / ratio, {m}" for m in modes) + " |")
    print("|---|" + "---|" * len(modes))
    for r in rows:
        print(f"| {r['agent']} | " + " | ".join(f"{r[f'steerflow_{m}']} / {r[f'reference_{m}']} / {r[f'ratio_{m}']}"
                                                 for m in modes) + " |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
