"""LPS with inference-time selection (docs/algorithms.md#lps-selection), on the CPU protocol's
checkpoints: one trained LPS run per (task, seed), scored without retraining at every point of a
grid of `select` (N latents near the actor's) and `select_sigma` (their spread), beside N = 0 (the
actor's own chunk, the plain LPS policy).

    taskset -c 0 .venv/bin/python benchmarks/protocol/selection.py train --tasks 2 4 --seeds 100 101
    taskset -c 0 .venv/bin/python benchmarks/protocol/selection.py eval --tasks 2 4 --seeds 100 101 --commit
    .venv/bin/python benchmarks/protocol/selection.py table

`train` runs `steerflow train --agent lps --preset cpu` (the protocol's unit, same seed, same
dataset) into `runs/protocol_cpu/selection/<task>-s<seed>/` unless that run has finished; its
final success is checked against the committed protocol unit of the same id when there is one.
`eval` scores each finished run's last checkpoint with `steerflow.train.evaluate_run` (50
episodes, the same reset seeds at every grid point) and writes one record per run,
`benchmarks/results/protocol_cpu/selection/<task>-s<seed>.json`, grid point by grid point, so a
session cut short keeps what it finished. Tuning seeds are 100 and 101 (tasks 2 and 4); a setting
that wins there is then scored on fresh seeds of the other tasks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from study import commit_records  # this folder's study.py (a script's own folder is on sys.path)

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "protocol_cpu" / "selection"
RESULTS = ROOT / "benchmarks" / "results" / "protocol_cpu" / "selection"
UNITS = ROOT / "benchmarks" / "results" / "protocol_cpu" / "units"
GRID = [{}] + [{"select": n, "select_sigma": s} for n in (8, 32) for s in (0.1, 0.3, 1.0)]


def run_dir(task: int, seed: int) -> Path:
    return RUNS / f"cube-single-task{task}-s{seed}"


def label(point: dict) -> str:
    return "actor (N = 0)" if not point else f"N = {point['select']}, σ = {point['select_sigma']}"


def train(args) -> int:
    from steerflow.train import RunSpec, single_thread_env, train_command

    for task in args.tasks:
        for seed in args.seeds:
            out = run_dir(task, seed)
            if (out / "final.json").is_file():
                continue
            spec = RunSpec(agent="lps", task=f"cube-single-task{task}", seeds=[seed], preset="cpu")
            print(f"[selection] {time.strftime('%H:%M:%S')} train {out.name}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out.parent / f"{out.name}.log", "ab") as log:
                code = subprocess.call(train_command(spec, out, resume=True), env=single_thread_env(),
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            if code:
                print(f"[selection] {out.name} exited {code}; see {out.parent / f'{out.name}.log'}")
                return code
            committed = UNITS / f"steerflow-lps-default-cube-single-task{task}-s{seed}" / "final.json"
            if committed.is_file():
                mine, theirs = (json.loads(p.read_text())["mean"] for p in (out / "final.json", committed))
                print(f"[selection] {out.name}: {100 * mine:.0f}% (committed protocol unit: {100 * theirs:.0f}%)")
    return 0


def evaluate(args) -> int:
    from steerflow.runinfo import atomic_write_json, device_description, git_commit
    from steerflow.train import evaluate_run

    for task in args.tasks:
        for seed in args.seeds:
            src, dst = run_dir(task, seed), RESULTS / f"cube-single-task{task}-s{seed}.json"
            record = json.loads(dst.read_text()) if dst.is_file() else {
                "task": f"cube-single-task{task}", "seed": seed, "episodes": args.episodes, "points": [],
                "device": device_description(), "commit": git_commit()}
            for point in GRID:
                if any(p["overrides"] == point for p in record["points"]):
                    continue
                t0 = time.time()
                result = evaluate_run(src, args.episodes, args.workers, {k: str(v) for k, v in point.items()})[0]
                record["points"].append({"overrides": point, "success": result["success"][0],
                                         "step": result["step"], "wall_s": round(time.time() - t0, 1)})
                atomic_write_json(dst, record)
                print(f"[selection] {dst.stem} {label(point)}: {100 * result['success'][0]:.0f}%", flush=True)
            if args.commit:
                commit_records(dst, f"selection: LPS inference-time selection grid on {dst.stem}")
    return 0


def table(args) -> int:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    if not records:
        raise SystemExit(f"no records under {RESULTS}")
    cols = [f"{r['task'].replace('cube-single-', '')} s{r['seed']}" for r in records]
    print("| setting | " + " | ".join(cols) + " | mean |")
    print("|---|" + "---:|" * (len(cols) + 1))
    for point in GRID:
        cells = [next((p["success"] for p in r["points"] if p["overrides"] == point), None) for r in records]
        done = [c for c in cells if c is not None]
        mean = f"{100 * sum(done) / len(done):.1f}" if len(done) == len(cells) else "–"
        print(f"| {label(point)} | " + " | ".join("–" if c is None else f"{100 * c:.0f}" for c in cells) + f" | {mean} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "eval"):
        s = sub.add_parser(name)
        s.add_argument("--tasks", type=int, nargs="+", default=[2, 4])
        s.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
        if name == "eval":
            s.add_argument("--episodes", type=int, default=50)
            s.add_argument("--workers", type=int, default=1)
            s.add_argument("--commit", action="store_true")
    sub.add_parser("table")
    args = p.parse_args(argv)
    return {"train": train, "eval": evaluate, "table": table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
