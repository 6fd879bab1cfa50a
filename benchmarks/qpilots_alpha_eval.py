"""One trained QPILOTS run, evaluated at several steering coefficients α.

QPILOTS steers only at inference. When the critic's TD target does not use the steered policy
(`steered_targets=false`, e.g. after `--base-from` a BC-FM run), nothing that was trained depends
on α, so one run's last checkpoint can be evaluated at every α of a grid: α = 0 is the base
policy itself, the rest show what the steering adds on the same base and critic. (With the
paper's steered targets the critic depends on the α it was trained with; this script still runs,
and says so in its records.)

    .venv/bin/python benchmarks/qpilots_alpha_eval.py RUN_DIR --alphas 0,0.1,0.3,1 [--best-of 8,32] \
        [--episodes 50] [--out benchmarks/results/qpilots_alpha_cpu/NAME.json]

`--best-of N,...` also evaluates selection instead of steering on the same base and critic: N
unsteered base samples per state, the one the online critic's pessimistic aggregate scores
highest (QC best-of-N's acting rule, without training a critic for it). That separates what the
gradient adds from what any use of the same critic adds.

Writes one JSON record with, per α (and per N), the success of every seed (50 episodes each, the
same episode seeds for every α) and the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def best_of_n_policy(n: int):
    """jit(state, obs (B, obs_dim), key) → the best of n clipped unsteered base samples (B, d)."""
    import jax
    import jax.numpy as jnp

    from steerflow.agents import qc_bon, qpilots_u

    def act(state, obs, key):
        cands = qpilots_u.base_sample(state, jnp.repeat(obs, n, axis=0), key, state.params["base"])
        return qc_bon.best_candidate(state.config.critic, state.params["critic"], obs,
                                     cands.reshape(obs.shape[0], n, -1))

    return jax.jit(act)


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
    parser.add_argument("--best-of", default="", help="comma-separated N: best-of-N selection on the same base and critic")
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
    out = args.out or args.run_dir / "alpha_eval.json"
    # an earlier record of the same checkpoint keeps its rows: only what it lacks is evaluated
    # (so `--best-of` can be added to a finished α grid, and an interrupted grid resumes)
    old = json.loads(out.read_text()) if out.exists() else {}
    if old and (old.get("step"), old.get("episodes"), old.get("seeds")) != (step, args.episodes, run.seeds):
        raise SystemExit(f"{out}: holds step {old.get('step')}, {old.get('episodes')} episodes, seeds "
                         f"{old.get('seeds')}; this evaluation is step {step}, {args.episodes} episodes, "
                         f"seeds {run.seeds}: pass another --out")
    here = {"device": device_description(), "commit": git_commit()}
    record = {"run_dir": str(args.run_dir), "agent": run.agent, "task": run.task, "seeds": run.seeds, "step": step,
              "base_from": run.base_from, "overrides": run.overrides, "episodes": args.episodes,
              "alpha_independent_training": not config.steered_targets,
              "results": old.get("results", []), "best_of_n": old.get("best_of_n", []),
              "device": old.get("device", here["device"]), "commit": old.get("commit", here["commit"])}

    def evaluate(rows: list, key: str, value, states_, policy=None) -> None:
        if any(r[key] == value for r in rows):
            return
        start = time.perf_counter()
        success = evaluate_states(agent, states_, spec, task, args.episodes, args.workers, seed=10_000_019,
                                  policy=policy)
        per_seed = success.mean(1).tolist()
        row = {key: value, "success": per_seed, "mean": float(np.mean(per_seed)),
               "eval_s": round(time.perf_counter() - start, 1), **here}
        rows.append(row)
        rows.sort(key=lambda r: r[key])
        print(json.dumps(row), flush=True)
        atomic_write_json(out, record)  # after every row: a killed grid keeps what finished

    for alpha in (float(a) for a in args.alphas.split(",") if a):
        evaluate(record["results"], "alpha", alpha, states.replace(config=dataclasses.replace(config, alpha=alpha)))
    for n in (int(v) for v in args.best_of.split(",") if v):
        evaluate(record["best_of_n"], "n", n, states, best_of_n_policy(n))
    if not record["best_of_n"]:
        del record["best_of_n"]
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
