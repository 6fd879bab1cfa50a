"""Why does an LPS run score what it does? Steering against its own base, the critic on held-out
demos, and where the actor's latents go. Works on OGBench runs and on imported-data runs with an
env (`--eval-task` / `--env`), through the run's stored normalisation.

For each seed of each LPS run directory (its last checkpoint):

* **in the env** (same episodes for both): the steered policy a = π_β(s, l_φ(s)) against the run's
  own base decoding random sphere latents a = π_β(s, z), z ~ U(√d·S^{d−1}) — the BC-MF policy LPS
  trains alongside its actor;
* **the critic on held-out demos** (the dataset's validation split): Q_j(s_t, a_{t:t+H}) of the
  demo's chunk against its Monte-Carlo return G_t = r_t + γ·mask_t·G_{t+1} within the demo (so
  G_t = Σ_k γ^k r_{t+k} up to the demo's end): mean error (bias), mean |error|, correlation;
* **what the critic believes steering buys**: at the same held-out states, the mean Q of the
  demo chunk, of 16 random-latent base chunks and of the steered chunk, each with the ensemble's
  disagreement (std over critics) — steering that exploits the critic shows as high Q with high
  disagreement;
* **where the latents go**: the steered chunk's RMS distance (normalised action units) to the
  demo's chunk and to the nearest of 16 base samples, and the mean pairwise cosine of the actor's
  latents over states (1: the actor ignores the state).

    .venv/bin/python benchmarks/diagnose_lps.py RUN_DIR [RUN_DIR ...] [--episodes 50] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BASE_SAMPLES = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="append one JSON row per (run, seed) here")
    ap.add_argument("--latent-noise", default="", help="also evaluate the actor's latent perturbed by σ·N(0, I) and "
                    "projected back, for each comma-separated σ (latent radius √d, so σ=1 mixes as much noise as signal)")
    args = ap.parse_args()
    sigmas = [float(s) for s in args.latent_noise.split(",") if s]
    for run_dir in args.runs:
        for row in diagnose(run_dir, args.episodes, sigmas):
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


def mc_returns(data: dict, discount: float) -> np.ndarray:
    """(N,) G_t = r_t + γ·mask_t·G_{t+1}, restarted at every trajectory end (`terminals`)."""
    g, out = 0.0, np.zeros(len(data["rewards"]), np.float32)
    for t in range(len(out) - 1, -1, -1):
        if data["terminals"][t] > 0:
            g = 0.0
        g = data["rewards"][t] + discount * data["masks"][t] * g
        out[t] = g
    return out


def diagnose(run_dir: Path, episodes: int, sigmas=()) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from steerflow.agents import lps
    from steerflow.agents.common import base_policy, critic_net
    from steerflow.data import source
    from steerflow.data.chunks import build_chunk_dataset, chunks_at
    from steerflow.generative import latent
    from steerflow.train.evaluation import restore_run

    run, agent, config, tc, spec, states, step, norm = restore_run(run_dir)
    if agent is not lps:
        raise SystemExit(f"{run_dir} is a {run.agent} run; this diagnoses LPS runs")
    _, val, _, _ = source.load_run_data(run, tc)
    discount = config.critic.discount
    ds = build_chunk_dataset(val, tc.horizon, discount)
    starts = source.offline_eval_starts(val, tc.horizon)
    batch = chunks_at(ds, jnp.asarray(starts))
    returns = mc_returns(val, discount)[starts]
    task = source.eval_task(run)
    base, critic = base_policy(config, spec), critic_net(config, spec)
    rows = []
    for i, seed in enumerate(run.seeds):
        state = jax.tree.map(lambda x: x[i], states)
        params = state.params
        obs, demo = batch["observations"], batch["actions"]
        latents, steered = lps.steer(state, params, obs)
        steered = jnp.clip(steered, -1, 1)
        z = latent.sample_prior(jax.random.PRNGKey(seed), (BASE_SAMPLES,) + demo.shape, config.geometry)
        samples = jnp.clip(jax.vmap(lambda zk: base.decode(params["base"], obs, zk))(z), -1, 1)  # (K, B, d)
        q = {name: critic.apply(params["critic"], obs, chunk)  # (J, B)
             for name, chunk in (("demo", demo), ("steered", steered))}
        q_base = jax.vmap(lambda c: critic.apply(params["critic"], obs, c))(samples)  # (K, J, B)
        err = np.asarray(q["demo"].mean(0)) - returns
        unit = latents / jnp.linalg.norm(latents, axis=-1, keepdims=True)
        cos = np.asarray(unit @ unit.T)
        rms = lambda a, b: np.sqrt(np.asarray(jnp.mean((a - b) ** 2, -1)))  # noqa: E731
        row = {"run": str(run_dir), "seed": seed, "step": step, "held_out_states": int(len(starts)),
               "critic_bias": float(err.mean()), "critic_abs_error": float(np.abs(err).mean()),
               "critic_corr": float(np.corrcoef(np.asarray(q["demo"].mean(0)), returns)[0, 1]),
               "mc_return_mean": float(returns.mean()),
               "q_demo": float(q["demo"].mean()), "q_base": float(q_base.mean()), "q_steered": float(q["steered"].mean()),
               "q_std_demo": float(q["demo"].std(0).mean()), "q_std_base": float(q_base.std(1).mean()),
               "q_std_steered": float(q["steered"].std(0).mean()),
               "steered_to_demo_rms": float(rms(steered, demo).mean()),
               "base_to_demo_rms": float(rms(samples, demo[None]).mean()),
               "steered_to_nearest_base_rms": float(rms(samples, steered[None]).min(0).mean()),
               "latent_cosine_mean": float(cos[np.triu_indices(len(cos), 1)].mean())}
        if task is not None:
            row.update(env_success(task, state, spec, norm, config, base, episodes, seed, sigmas))
        rows.append(row)
    return rows


def env_success(task, state, spec, norm, config, base, episodes: int, seed: int, sigmas=()) -> dict:
    """Success of the steered policy, of the base on random latents and (per σ in `sigmas`) of the
    steered latent perturbed by σ·N(0, I) and projected back onto the prior's support, on the same
    episodes: is a deterministic steered policy losing what the stochastic base keeps?"""
    import jax
    import jax.numpy as jnp

    from steerflow.agents import lps
    from steerflow.envs.pool import EnvPool, run_episodes
    from steerflow.generative import latent

    @jax.jit
    def perturbed(o, key, sigma):  # sigma = 0: the steered policy itself
        l_phi, _ = lps.steer(state, state.params, o)
        z = latent.constrain(l_phi + sigma * jax.random.normal(key, l_phi.shape), config.geometry)
        return jnp.clip(base.decode(state.params["base"], o, z), -1, 1)

    @jax.jit
    def random_latent(o, key):
        z = latent.sample_prior(key, (o.shape[0], spec.chunk_dim), config.geometry)
        return jnp.clip(base.decode(state.params["base"], o, z), -1, 1)

    key = [jax.random.PRNGKey(seed + 1)]

    def keyed(act):
        def policy(o):
            key[0], sub = jax.random.split(key[0])
            return act(o, sub)
        return policy

    policies = {"steered_success": keyed(lambda o, k: perturbed(o, k, 0.0)), "base_success": keyed(random_latent)}
    policies.update({f"steered_noise_{sigma:g}_success": keyed(lambda o, k, s=sigma: perturbed(o, k, s)) for sigma in sigmas})
    out = {}
    with EnvPool(task, min(episodes, 10), workers=0) as pool:
        for name, act in policies.items():
            policy = lambda o, act=act: np.asarray(norm.denormalize_action(np.asarray(  # noqa: E731
                act(jnp.asarray(norm.normalize_obs(np.asarray(o, np.float32)))))))
            out[name] = float(run_episodes(pool, policy, spec.horizon, episodes, seed=7)["success"].mean())
    return out


if __name__ == "__main__":
    main()
