"""One trained QPILOTS run, evaluated at several steering coefficients α (issue 10, item 8).

QPILOTS steers only at inference. When the critic's TD target does not use the steered policy
(`steered_targets=false`, e.g. after `--base-from` a BC-FM run), nothing that was trained depends
on α, so one run's last checkpoint can be evaluated at every α of a grid: α = 0 is the base
policy itself, the rest show what the steering adds on the same base and critic. (With the
paper's steered targets the critic depends on the α it was trained with; this script still runs,
and says so in its records.)

    .venv/bin/python benchmarks/qpilots_alpha_eval.py RUN_DIR --alphas 0,0.1,0.3,1 [--episodes 50] \
        [--out benchmarks/results/qpilots_alpha_cpu/NAME.json]

Writes one JSON record with, per α, the success of every seed (50 episodes each, the same episode
seeds for every α) and the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> None:
    import jax
    import numpy as np

    from steerflow.agents.common import EnvSpec
    from steerflow.data.tasks import parse_task
    from steerflow.runinfo import atomic_write_json, device_description, git_commit
    from steerflow.train import RunSpec, evaluate_states, load_checkpoint, resolve

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--alphas", default="0,0.1,0.3,1")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    stored = json.loads((args.run_dir / "config.json").read_text())
    run = RunSpec(**stored["run"])
    if not run.agent.startswith("qpilots"):
        raise SystemExit(f"{args.run_dir}: agent {run.agent!r} is not a QPILOTS agent")
    agent, config, tc = resolve(run)
    task = parse_task(run.task)
    spec = EnvSpec(obs_dim=task.obs_dim, action_dim=task.action_dim, horizon=tc.horizon)
    keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in run.seeds])
    states = jax.vmap(lambda k: agent.init(k, spec, config))(keys)
    states, _, step = load_checkpoint(args.run_dir, states, keys)
    results = []
    for alpha in (float(a) for a in args.alphas.split(",")):
        start = time.perf_counter()
        steered = states.replace(config=dataclasses.replace(config, alpha=alpha))
        success = evaluate_states(agent, steered, spec, task, args.episodes, args.workers, seed=10_000_019)
        per_seed = success.mean(1).tolist()
        results.append({"alpha": alpha, "success": per_seed, "mean": float(np.mean(per_seed)),
                        "eval_s": round(time.perf_counter() - start, 1)})
        print(json.dumps(results[-1]), flush=True)
    record = {"run_dir": str(args.run_dir), "agent": run.agent, "task": run.task, "seeds": run.seeds, "step": step,
              "base_from": run.base_from, "overrides": run.overrides, "episodes": args.episodes,
              "alpha_independent_training": not config.steered_targets, "results": results,
              "device": device_description(), "commit": git_commit()}
    out = args.out or args.run_dir / "alpha_eval.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
