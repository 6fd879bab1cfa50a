"""The practitioner scenario of issue 12: a few tens of successful, noisy demos without rewards.

50 successful demos of cube-single task 2 from OGBench's CubePlanOracle with its noise (0.1,
smoothing 0.5: suboptimal like teleoperation; `export_formats.oracle_task_demos`) are written to a
robomimic HDF5 file without rewards, imported like a user's file (`steerflow data import`), and
trained on with `--reward sparse-success` by BC-MF, LPS and DSRL-NA (every seed vmapped in one
process, the CPU protocol's nets: 2x256, batch 128), then evaluated in the cube-single-task2 env
through the stored normalisation. Prints success per seed with 95% bootstrap CIs and writes
benchmarks/results/practitioner_<cpu|gpu>.json naming the machine, the budget and the wall times.

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/practitioner.py --steps 5000 --eval-episodes 20

The budget is a flag because the CPU protocol's 100K steps per agent do not fit a shared core;
the JSON says which budget was run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AGENTS = ("bc-mf", "lps", "dsrl-na")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--out", type=Path, default=Path("runs/practitioner"))
    ap.add_argument("--note", default="", help="e.g. the machine's load while it ran")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

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
    for agent in args.agents.split(","):
        run = RunSpec(agent=agent, task="cube-single-task2", seeds=seeds, preset="cpu", dataset=name,
                      reward="sparse-success",
                      train_overrides={"steps": str(args.steps), "eval_every": str(args.steps),
                                       "eval_episodes": str(args.eval_episodes), "checkpoint_every": str(args.steps)})
        start = time.perf_counter()
        final = train(run, args.out / agent, resume=True)
        wall = time.perf_counter() - start
        success = np.asarray(final["final_success"], float)
        rows = list(csv_rows(args.out / agent / "metrics.csv"))
        results[agent] = {"success": success.tolist(), "mean": float(success.mean()),
                          "ci95": list(bootstrap_ci(success)), "wall_s": round(wall, 1),
                          "steps_per_s_last": float(rows[-1]["steps_per_s"]) if rows else None}
        print(f"{agent:8s} success {success.mean():.3f} 95% CI {results[agent]['ci95']} per seed "
              f"{np.round(success, 3).tolist()}  ({wall:.0f} s)", flush=True)
    record = {"benchmark": "practitioner", "task": "cube-single-task2", "demos": args.demos,
              "demo_lengths": [len(d["actions"]) for d in demos], "demo_generation_s": round(demo_s, 1),
              "reward": "sparse-success", "steps": args.steps, "eval_episodes": args.eval_episodes, "seeds": seeds,
              "preset": "cpu (2x256 nets, batch 128)", "results": results, "device": device_description(),
              "machine": platform.node(), "cpu_affinity": sorted(os.sched_getaffinity(0)), "commit": git_commit(),
              "note": args.note}
    kind = "gpu" if "gpu" in device_description().lower() or "cuda" in device_description().lower() else "cpu"
    atomic_write_json(HERE / "results" / f"practitioner_{kind}.json", record)
    print(json.dumps(record, indent=1))


def csv_rows(path: Path):
    import csv

    if path.exists():
        with open(path) as f:
            yield from csv.DictReader(f)


if __name__ == "__main__":
    main()
