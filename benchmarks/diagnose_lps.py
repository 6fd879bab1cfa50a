"""Diagnostic for LPS runs: is the steering or the base policy to blame for a low success rate?

For each LPS run directory, evaluates (same episodes, same seeds) both the steered policy
a = π_β(s, l_φ(s)) and the run's own base policy decoding random prior latents
a = π_β(s, z), z ~ sphere — i.e. the BC-MF policy that LPS trains alongside its actor.

    .venv/bin/python benchmarks/diagnose_lps.py runs/cube_single/lps_cube-single-task1_seed0 ... [--episodes 50]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    from steerflow.agents import lps
    from steerflow.agents.common import EnvSpec
    from steerflow.data.tasks import parse_task
    from steerflow.evaluate import EnvPool, run_episodes
    from steerflow.generative import latent, meanflow
    from steerflow.train import RunSpec, load_checkpoint, resolve

    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for run_dir in args.runs:
        run = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
        agent, config, tc = resolve(run)
        assert agent is lps, f"{run_dir} is not an LPS run"
        task = parse_task(run.task)
        spec = EnvSpec(task.obs_dim, task.action_dim, tc.horizon)
        keys = jnp.stack([jax.random.PRNGKey(s) for s in run.seeds])
        states = jax.vmap(lambda k: lps.init(k, spec, config))(keys)
        states, _, step = load_checkpoint(run_dir, states, keys)
        state = jax.tree.map(lambda x: x[0], states)
        base = meanflow.make_net(config.base, spec.chunk_dim)

        @jax.jit
        def base_only(obs, key):
            z = latent.sample_prior(key, (obs.shape[0], spec.chunk_dim), config.geometry)
            return jnp.clip(meanflow.decode(base.apply, state.params["base"], obs, z), -1, 1)

        steered = jax.jit(lambda obs: lps.act(state, obs))
        key = jax.random.PRNGKey(0)

        def base_policy(obs):
            nonlocal key
            key, sub = jax.random.split(key)
            return np.asarray(base_only(jnp.asarray(obs, jnp.float32), sub))

        with EnvPool(task, 10, workers=0) as pool:
            s_steer = run_episodes(pool, lambda o: np.asarray(steered(jnp.asarray(o, jnp.float32))),
                                   spec.horizon, args.episodes, seed=7)["success"].mean()
            s_base = run_episodes(pool, base_policy, spec.horizon, args.episodes, seed=7)["success"].mean()
        row = {"run": str(run_dir), "step": step, "steered_success": float(s_steer), "base_only_success": float(s_base)}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
