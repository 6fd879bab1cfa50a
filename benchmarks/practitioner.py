"""The practitioner scenario of issue 12: a few tens of successful, noisy demos without rewards.

50 successful demos of cube-single task 2 from OGBench's CubePlanOracle with its noise (0.1,
smoothing 0.5: suboptimal like teleoperation; `export_formats.oracle_task_demos`) are written to a
robomimic HDF5 file without rewards, imported like a user's file (`steerflow data import`), and
trained on with `--reward sparse-success` by BC-MF, LPS and DSRL-NA (every seed vmapped in one
process, the CPU protocol's nets: 2x256, batch 128), then evaluated in the cube-single-task2 env
through the stored normalisation. Prints success per seed with 95% bootstrap CIs and writes
benchmarks/results/practitioner_<cpu|gpu>.json naming the machine, the budget and the wall times.

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/practitioner.py --steps 20000 --eval-episodes 50
    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/practitioner.py --rows lps-dit --steps 5000

The budget is a flag because the CPU protocol's 100K steps per agent do not fit a shared core;
each row of the JSON says which budget it ran. Rows accumulate: an invocation replaces the rows it
runs and keeps the others (so the slow DiT row can run at its own budget). `peak_rss_mb` is the
process's peak resident memory after the row (rows run in order in one process, so it is the
row's own peak only for the first row of an invocation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# row name -> (agent, agent-config overrides)
ROWS = {"bc-mf": ("bc-mf", {}), "lps": ("lps", {}), "dsrl-na": ("dsrl-na", {}),
        "lps-dit": ("lps", {"base.arch": "dit"})}  # the DiT base (src/steerflow/dit.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps too (0: at the end only); "
                    "the row's `curve` holds every evaluation")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default="bc-mf,lps,dsrl-na", help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--out", type=Path, default=Path("runs/practitioner"))
    ap.add_argument("--results", type=Path, default=None,
                    help="the JSON its rows go to (default benchmarks/results/practitioner_<cpu|gpu>.json)")
    ap.add_argument("--note", default="", help="e.g. the machine's load while it ran")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows {','.join(unknown)}: unknown; expected some of {', '.join(ROWS)}")

    from tqdm import tqdm

    from steerflow.data import export_formats as ex
    from steerflow.data.imports import import_path
    from steerflow.report import bootstrap_ci
    from steerflow.runinfo import atomic_write_json, device_description, git_commit
    from steerflow.train import RunSpec, train

    name = f"practitioner-cube-single-task2-{args.demos}"
    t0 = time.perf_counter()
    with tqdm(total=args.demos, desc="successful oracle demos", unit="demo") as bar:
        demos = ex.oracle_task_demos("cube-single-task2", args.demos, seed=0, progress=bar.update)
    demo_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = ex.write_robomimic(Path(tmp) / "demos.hdf5", demos)  # no rewards, no dones
        import_path("robomimic", path, name, obs_keys=list(ex.ROBOMIMIC_KEYS), replace=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for row in rows:
        agent, overrides = ROWS[row]
        run = RunSpec(agent=agent, task="cube-single-task2", seeds=seeds, preset="cpu", dataset=name,
                      reward="sparse-success", overrides=overrides,
                      train_overrides={"steps": str(args.steps), "eval_every": str(args.eval_every or args.steps),
                                       "eval_episodes": str(args.eval_episodes), "checkpoint_every": str(args.steps)})
        start = time.perf_counter()
        run_dir = args.out / f"{row}-{args.steps}"
        final = train(run, run_dir, resume=True)
        wall = time.perf_counter() - start
        success = np.asarray(final["final_success"], float)
        metrics = list(csv_rows(run_dir / "metrics.csv"))
        curve = {int(f.stem.split("_")[1]): json.loads(f.read_text())["success"]
                 for f in sorted((run_dir / "evals").glob("step_*.json"))}
        results[row_key(row, args.steps)] = {"curve": curve, "agent": agent, "overrides": overrides, "steps": args.steps, "seeds": seeds,
                        "eval_episodes": args.eval_episodes, "success": success.tolist(),
                        "mean": float(success.mean()), "ci95": list(bootstrap_ci(success)),
                        "wall_s": round(wall, 1),
                        "steps_per_s_last": float(metrics[-1]["steps_per_s"]) if metrics else None,
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                        "commit": git_commit(), "note": args.note}
        print(f"{row:8s} success {success.mean():.3f} 95% CI {results[row_key(row, args.steps)]['ci95']} per seed "
              f"{np.round(success, 3).tolist()}  ({wall:.0f} s)", flush=True)
    record = {"benchmark": "practitioner", "task": "cube-single-task2", "demos": args.demos,
              "demo_lengths": [len(d["actions"]) for d in demos], "demo_generation_s": round(demo_s, 1),
              "reward": "sparse-success", "preset": "cpu (2x256 nets, batch 128), seeds vmapped in one process",
              "device": device_description(), "machine": platform.node(),
              "cpu_affinity": sorted(os.sched_getaffinity(0)), "results": results}
    kind = "gpu" if "gpu" in device_description().lower() or "cuda" in device_description().lower() else "cpu"
    path = args.results or HERE / "results" / f"practitioner_{kind}.json"
    if path.exists():  # keep the rows this invocation did not run
        kept = json.loads(path.read_text()).get("results", {})
        record["results"] = {**{k: v for k, v in kept.items() if k not in results}, **results}
    atomic_write_json(path, record)
    print(json.dumps(record, indent=1))


def row_key(row: str, steps: int) -> str:
    """A row's key in the JSON: the row name at the original 20K budget, `row@STEPS` otherwise."""
    return row if steps == 20000 else f"{row}@{steps}"


def csv_rows(path: Path):
    import csv

    if path.exists():
        with open(path) as f:
            yield from csv.DictReader(f)


if __name__ == "__main__":
    main()
