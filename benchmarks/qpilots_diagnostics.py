"""Does QPILOTS-U steering exploit its critic, or waste its gradient? Offline, no environment.

On dataset states of the run's task, one trained QPILOTS-U run (the *steering* run) produces
chunks by each acting rule on its own base and critic: the base itself (α = 0), best-of-N
unsteered base samples ranked by the critic (N of `--best-of`, the rule of
`benchmarks/qpilots_alpha_eval.py`), and the steered sampler at each α of `--alphas`. Each
chunk is valued by

- the steering critic's pessimistic target aggregate ψ (what the steering climbs), and
- the *judge*: the same aggregate of an independently trained critic (`JUDGE_RUN`, a second
  QPILOTS-U run on the same frozen base, e.g. the 10-critic critic judging the 2-critic one).

A rule that raises ψ but not the judge's value is exploiting errors of its own critic; a rule
that raises neither is wasting its gradient. Two more columns say where the gradient goes:
the RMS distance (per chunk coordinate) from each chunk to the nearest of `--nearest` fresh base
samples at the same state (how far off the base's support it moves), and, for steering, the share
of the steering displacement that the final clip to [-1, 1] removes,

    lost = 1 − ‖clip(x_α) − clip(x_0)‖ / ‖x_α − x_0‖      (x_α, x_0 from the same noise)

with the fraction of coordinates of x_α outside [-1, 1]. Deltas are paired per state against the
base's chunk from the same noise, with 95% bootstrap intervals over states.

    .venv/bin/python benchmarks/qpilots_diagnostics.py STEER_RUN JUDGE_RUN [--states 2000] \
        [--alphas 0.02,0.05,0.1,0.2,0.3] [--best-of 8,32] [--nearest 64] [--out FILE.json]

Writes one JSON record (default `STEER_RUN/diagnostics.json`) and prints a table. Shapes: states
(B, obs_dim), chunks (B, d) with d = horizon · action_dim; time convention of the sampler in
`src/steerflow/agents/qpilots_u.py` (noise at τ = 0, data at τ = 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qpilots_alpha_eval import best_of_n_policy  # noqa: E402

SAMPLE_SEED = 20_251_206  # the dataset states' draw and the sampler keys: the same for every rule


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("steer_run", type=Path)
    parser.add_argument("judge_run", type=Path)
    parser.add_argument("--states", type=int, default=2000)
    parser.add_argument("--alphas", default="0.02,0.05,0.1,0.2,0.3")
    parser.add_argument("--best-of", default="8,32")
    parser.add_argument("--nearest", type=int, default=64, help="base samples per state for the nearest distance")
    parser.add_argument("--batch", type=int, default=500, help="states per jitted call")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        args.alpha_list = [float(a) for a in args.alphas.split(",") if a]
        args.n_list = [int(n) for n in args.best_of.split(",") if n]
    except ValueError as err:
        parser.error(f"--alphas / --best-of: {err}")
    if any(a <= 0 for a in args.alpha_list) or any(n < 2 for n in args.n_list):
        parser.error("--alphas must be > 0 (α = 0 is the base row) and --best-of N ≥ 2")
    if args.states < 2 or args.nearest < 1 or args.batch < 1:
        parser.error("--states must be ≥ 2, --nearest and --batch ≥ 1")
    return args


def restore_single(run_dir: Path, seed_index: int = 0):
    """(run, tc, state of one seed) of a QPILOTS-U run's last checkpoint; SystemExit(2) otherwise."""
    import jax

    from steerflow.train.evaluation import restore_run

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise SystemExit(f"error: {run_dir}/config.json missing: not a run directory")
    try:
        run, _, _, tc, _, states, _, _ = restore_run(run_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}")
    if run.agent != "qpilots-u":
        raise SystemExit(f"error: {run_dir}: agent {run.agent!r}; the diagnostics need a qpilots-u run")
    return run, tc, jax.tree_util.tree_map(lambda x: x[seed_index], states)


def dataset_states(run, tc, count: int) -> np.ndarray:
    """`count` observations drawn without replacement from the run's training dataset, (count, obs_dim)."""
    from steerflow.data.tasks import load_task_dataset

    train, _, _ = load_task_dataset(run.task, episodes=tc.dataset_episodes, seed=tc.dataset_seed,
                                    generate_if_missing=False)
    obs = train["observations"]
    if count > len(obs):
        raise SystemExit(f"error: --states {count} > the dataset's {len(obs)} observations")
    return obs[np.random.default_rng(SAMPLE_SEED).choice(len(obs), count, replace=False)]


def rule_chunks(state, alphas, ns):
    """jit(obs (B, obs_dim), key) → {rule: (B, d)}: the base chunk, the steered endpoints before
    the clip (`steer:α`), the best-of-N chunks (`bon:N`), all from the same key."""
    import jax

    from steerflow.agents import qpilots_u

    base = state.params["base"]
    steer = {a: state.replace(config=dataclasses.replace(state.config, alpha=a)) for a in alphas}
    bon = {n: best_of_n_policy(n) for n in ns}

    def chunks(obs, key):
        out = {"base": qpilots_u.base_endpoint(state, obs, key, base)}
        out.update({f"steer:{a}": qpilots_u.steered_endpoint(s, obs, key, base) for a, s in steer.items()})
        out.update({f"bon:{n}": policy(state, obs, key) for n, policy in bon.items()})
        return out

    return jax.jit(chunks)


def base_samples(state, nearest: int):
    """jit(obs (B, obs_dim), key) → (B, nearest, d): fresh clipped base samples at each state."""
    import jax
    import jax.numpy as jnp

    from steerflow.agents import qpilots_u

    def samples(obs, key):
        x = qpilots_u.base_sample(state, jnp.repeat(obs, nearest, axis=0), key, state.params["base"])
        return x.reshape(obs.shape[0], nearest, -1)

    return jax.jit(samples)


def rms_to_nearest(samples: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """(B,): RMS distance per coordinate from each chunk (B, d) to the nearest of its samples (B, N, d)."""
    return np.sqrt(np.min(np.mean((np.asarray(samples) - np.asarray(chunks)[:, None]) ** 2, axis=-1), axis=1))


def nearest_base_rms(state, nearest: int):
    """(obs (B, obs_dim), chunks (B, d), key) → (B,): `rms_to_nearest` of `nearest` fresh base samples."""
    sample = base_samples(state, nearest)
    return lambda obs, chunks, key: rms_to_nearest(sample(obs, key), chunks)


def critic_values(state):
    """jit(obs, chunks) → (B,): the target ensemble's pessimistic aggregate ψ (`qpilots_u.pessimistic_value`)."""
    import jax

    from steerflow.agents import qpilots_u

    return jax.jit(qpilots_u.pessimistic_value(state))


def clip_loss(x_steer: np.ndarray, x_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) share of ‖x_α − x_0‖ removed by the final clip (NaN where the step is 0), and the
    (B,) fraction of coordinates of x_α outside [-1, 1]."""
    raw = np.linalg.norm(x_steer - x_base, axis=-1)
    kept = np.linalg.norm(np.clip(x_steer, -1, 1) - np.clip(x_base, -1, 1), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        lost = np.where(raw > 0, 1.0 - kept / raw, np.nan)
    return lost, np.mean(np.abs(x_steer) > 1.0, axis=-1)


def bootstrap_ci(values: np.ndarray, reps: int = 2000) -> list[float]:
    """95% percentile interval of the mean of `values` (B,) over states."""
    rng = np.random.default_rng(SAMPLE_SEED)
    means = values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def collect(steer_state, judge_state, obs: np.ndarray, args) -> dict[str, dict[str, np.ndarray]]:
    """{rule: {column: (B,)}} over all states, in batches of `args.batch`."""
    import jax

    chunks_fn = rule_chunks(steer_state, args.alpha_list, args.n_list)
    sample_fn = base_samples(steer_state, args.nearest)
    psi, judge = critic_values(steer_state), critic_values(judge_state)
    cols: dict[str, dict[str, list]] = {}
    key = jax.random.PRNGKey(SAMPLE_SEED)
    for i, start in enumerate(range(0, len(obs), args.batch)):
        o = obs[start:start + args.batch]
        k_act, k_near = jax.random.split(jax.random.fold_in(key, i))
        chunks = {r: np.asarray(c) for r, c in chunks_fn(o, k_act).items()}
        samples = np.asarray(sample_fn(o, k_near))  # drawn once per batch, shared by every rule
        for rule, x in chunks.items():
            acted = np.clip(x, -1.0, 1.0)
            row = {"steer_value": np.asarray(psi(o, acted)), "judge_value": np.asarray(judge(o, acted)),
                   "nearest_rms": rms_to_nearest(samples, acted)}
            if rule.startswith("steer:"):
                row["clip_lost"], row["clipped_coords"] = clip_loss(x, chunks["base"])
            for name, value in row.items():
                cols.setdefault(rule, {}).setdefault(name, []).append(value)
    return {r: {c: np.concatenate(v) for c, v in cs.items()} for r, cs in cols.items()}


def summarise(cols: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """One row per rule: column means, paired deltas against the base with bootstrap CIs, and the
    share of states whose judge value the rule raises."""
    base = cols["base"]
    rows = []
    for rule, c in cols.items():
        kind, _, value = rule.partition(":")
        row = {"rule": kind, "param": float(value) if kind == "steer" else int(value) if value else None}
        for name in ("steer_value", "judge_value", "nearest_rms", "clip_lost", "clipped_coords"):
            if name in c:
                row[name] = float(np.nanmean(c[name]))
        for name in ("steer_value", "judge_value"):
            delta = c[name] - base[name]
            row[f"{name}_delta"], row[f"{name}_delta_ci"] = float(delta.mean()), bootstrap_ci(delta)
        row["judge_raised"] = float(np.mean(c["judge_value"] > base["judge_value"]))
        rows.append(row)
    order = {"base": 0, "bon": 1, "steer": 2}
    return sorted(rows, key=lambda r: (order[r["rule"]], r["param"] or 0))


def print_table(rows: list[dict]) -> None:
    print(f"{'rule':<12}{'Δψ steer':>10}{'Δψ judge':>10}{'judge↑':>8}{'nearest':>9}{'clip lost':>10}{'clipped':>9}")
    for r in rows:
        name = r["rule"] if r["param"] is None else f"{r['rule']} {r['param']:g}"
        clip = f"{r['clip_lost']:>10.2f}{r['clipped_coords']:>9.3f}" if "clip_lost" in r else ""
        print(f"{name:<12}{r['steer_value_delta']:>10.3f}{r['judge_value_delta']:>10.3f}{r['judge_raised']:>8.2f}"
              f"{r['nearest_rms']:>9.3f}{clip}")


def main(argv=None) -> None:
    args = parse_args(argv)
    from steerflow.runinfo import atomic_write_json, device_description, git_commit

    steer_run, tc, steer_state = restore_single(args.steer_run)
    judge_run, _, judge_state = restore_single(args.judge_run)
    if (judge_run.task, judge_run.base_from) != (steer_run.task, steer_run.base_from):
        raise SystemExit(f"error: the judge {args.judge_run} is task {judge_run.task!r} on base {judge_run.base_from}; "
                         f"the steering run is {steer_run.task!r} on {steer_run.base_from}: the judge must value "
                         "the same base on the same task")
    obs = dataset_states(steer_run, tc, args.states)
    rows = summarise(collect(steer_state, judge_state, obs, args))
    print_table(rows)
    record = {"steer_run": str(args.steer_run), "judge_run": str(args.judge_run), "task": steer_run.task,
              "seed": steer_run.seeds[0], "judge_seed": judge_run.seeds[0], "steer_overrides": steer_run.overrides,
              "judge_overrides": judge_run.overrides,
              "states": args.states, "nearest": args.nearest, "sample_seed": SAMPLE_SEED, "rows": rows,
              "device": device_description(), "commit": git_commit()}
    out = args.out or args.steer_run / "diagnostics.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
