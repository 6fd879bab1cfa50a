"""LPS on images: a small visual cube-single task 2.

Successful demos of cube-single task 2 from OGBench's CubePlanOracle with its noise
(`steerflow.demos.writers.oracle_task_demos`, as benchmarks/practitioner.py), their simulator states
rendered into 64x64x3 frames of the visual env (`data.render`: what visual-cube-single-task2
observes; pixels only, no low-dim state), imported without rewards, and trained on by LPS with
`--reward sparse-success` through the IMPALA-style encoder (`steerflow.encoders`, one per network
by default). Scored offline: the held-out demo's action MSE (in-env evaluation of image runs is
not built). Prints and writes benchmarks/results/visual_<cpu|gpu>.json: render frames/s, training
steps/s, peak resident memory, val_action_mse, the budget and the machine.

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/visual.py --demos 4 --steps 200

Rendering is software OpenGL on a CPU here (~2 frames/s on a loaded core), so the number of demos
is what the render budget allows, not "a few tens"; the JSON states it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--arch", default="impala-small", help="encoder.arch (steerflow.encoders.ARCHS)")
    ap.add_argument("--share", action="store_true", help="one shared encoder instead of one per network")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, default=Path("runs/visual"))
    ap.add_argument("--note", default="", help="e.g. the machine's load while it ran")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

    from tqdm import tqdm

    from steerflow.demos import writers as ex
    from steerflow.data.imports import import_episodes, imported_meta
    from steerflow.data.render import StateRenderer, rendered_demos
    from steerflow.runinfo import atomic_write_json, device_description, git_commit
    from steerflow.train import RunSpec, train

    name = f"visual-cube-single-task2-demos{args.demos}"
    t0 = time.perf_counter()
    with tqdm(total=args.demos, desc="successful oracle demos", unit="demo") as bar:
        demos = ex.oracle_task_demos("cube-single-task2", args.demos, seed=0, progress=bar.update, record_states=True)
    demo_s = time.perf_counter() - t0
    frames = sum(len(d["qpos"]) for d in demos)
    renderer = StateRenderer("cube-single", 2)
    t0 = time.perf_counter()
    with tqdm(total=frames, desc="rendering 64x64 frames", unit="frame") as bar:
        episodes = rendered_demos(demos, renderer, bar.update)
    render_s = time.perf_counter() - t0
    renderer.close()
    import_episodes(episodes, name, "ogbench-render", "cube-single-task2 oracle demos", {"demos": args.demos},
                    replace=True, action_bounds=(-1.0, 1.0))
    meta = imported_meta(name)
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = {"encoder.arch": args.arch, "encoder.share": str(args.share)}
    run = RunSpec(agent="lps", task=f"dataset:{name}", seeds=seeds, preset="cpu", dataset=name, reward="sparse-success",
                  overrides=overrides,
                  train_overrides={"steps": str(args.steps), "batch_size": str(args.batch_size), "updates_per_call": "10",
                                   "log_every": str(min(10, args.steps)), "eval_every": str(args.steps),
                                   "checkpoint_every": str(args.steps)})
    out = args.out / f"lps-{args.arch}{'-shared' if args.share else ''}"
    t0 = time.perf_counter()
    final = train(run, out, resume=True)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(open(out / "metrics.csv"))) if (out / "metrics.csv").exists() else []
    losses = {k: [float(rows[0][k]), float(rows[-1][k])] for k in ("critic_loss", "mf_loss") if rows and k in rows[0]}
    record = {"benchmark": "visual", "task": "cube-single-task2 rendered as visual-cube-single-task2 (64x64x3, pixels only)",
              "agent": "lps", "encoder": overrides, "demos": args.demos, "demo_lengths": [len(d["actions"]) for d in demos],
              "demo_generation_s": round(demo_s, 1), "frames": frames, "render_s": round(render_s, 1),
              "render_frames_per_s": round(frames / render_s, 2), "mujoco_gl": os.environ.get("MUJOCO_GL"),
              "train_transitions": meta["transitions"], "val_episodes": meta["val_episodes"], "reward": "sparse-success",
              "budget": {"steps": args.steps, "batch_size": args.batch_size, "seeds": seeds,
                         "nets": "cpu preset (2x256 critic, base and actor)"},
              "steps_per_s_last": float(rows[-1]["steps_per_s"]) if rows else None,
              "train_wall_s": round(wall, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "val_action_mse": final.get("val_action_mse"), "losses_first_last_log": losses,
              "device": device_description(), "machine": platform.node(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
              "commit": git_commit(), "note": args.note}
    kind = "gpu" if "gpu" in device_description().lower() or "cuda" in device_description().lower() else "cpu"
    atomic_write_json(HERE / "results" / f"visual_{kind}.json", record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
