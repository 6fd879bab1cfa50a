"""Evaluation of every seed's policy in the real env (in training and `steerflow eval`) and the
evaluation records `evals/step_XXXXXXXX.json`, `eval.csv` (in training also sent to the run's
trackers, `steerflow.tracking.Trackers`, as they are written)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from steerflow.errors import EvalStopped

from .checkpoint import load_checkpoint
from .core import make_policy
from .presets import RunSpec, resolve




def evaluate_states(agent, states, spec, task, episodes: int, workers: int, seed: int, policy=None,
                    pool=None, max_envs: int = 10, show_progress: bool = False, desc: str = "eval",
                    should_stop=None, with_final_reward: bool = False):
    """Success (S, episodes) of every seed's policy (and, `with_final_reward`, each episode's reward
    of its last state, (S, episodes), see `run_episodes`); each seed's episodes run in waves of at most
    `max_envs` environments stepped together, one batched `act` call per chunk. With
    `show_progress`, a bar shows episodes done, success so far and the ETA; `should_stop()` true
    between chunks aborts it (`EvalStopped`)."""
    import jax
    from tqdm import tqdm

    from steerflow.envs.pool import EnvPool, run_episodes

    num_seeds = jax.tree.leaves(states.params)[0].shape[0]
    policy = policy or make_policy(agent)
    key = jax.random.PRNGKey(seed)
    own_pool = pool is None
    pool = pool or EnvPool(task, min(episodes, max_envs), workers)
    results = []
    bar = tqdm(total=num_seeds * episodes, desc=desc, unit="ep", leave=False, dynamic_ncols=True,
               disable=not show_progress)
    solved = 0

    def progress(done: int, successes: int):
        nonlocal solved
        solved += successes
        bar.update(done)
        bar.set_postfix_str(f"success so far {solved}/{bar.n} = {solved / max(bar.n, 1):.2f}")

    def stop() -> bool:
        if should_stop is not None and should_stop():
            raise EvalStopped
        return False

    try:
        for i in range(num_seeds):
            state = jax.tree.map(lambda x: x[i], states)

            def act(obs):
                nonlocal key
                stop()
                key, sub = jax.random.split(key)
                return np.asarray(policy(state, np.asarray(obs, np.float32), sub))

            results.append(run_episodes(pool, act, spec.horizon, episodes, seed=seed, progress=progress))
    finally:
        bar.close()
        if own_pool:
            pool.close()
    success = np.stack([r["success"] for r in results])
    return (success, np.stack([r["final_reward"] for r in results])) if with_final_reward else success


def _record_eval(run_dir: Path, step: int, seeds: list[int], success: np.ndarray, run: RunSpec,
                 eval_s: float | None = None, env_steps: list[int] | None = None,
                 final_reward: np.ndarray | None = None, trackers=None, val_action_mse: np.ndarray | None = None) -> dict:
    """`evals/step_XXXXXXXX.json` and rows of `eval.csv`; in the online phase the record also holds
    each seed's env steps so far (`env_steps`), the x-axis where online starts. `final_reward`
    (per seed, mean over episodes) is minus the sub-goals left at the episodes' ends: where success
    sits at 0 on a multi-object task, it says whether a policy gets anywhere. `val_action_mse` (per
    seed): an imported dataset's held-out demos, scored beside success — the signal a user without
    an env to evaluate in has for choosing a checkpoint."""
    from steerflow.runinfo import atomic_write_json

    per_seed = success.mean(1).tolist()
    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": seeds,
              "episodes": int(success.shape[1]), "success": per_seed, "mean": float(np.mean(per_seed)),
              **({"final_reward": final_reward.mean(1).tolist()} if final_reward is not None else {}),
              **({"eval_s": round(eval_s, 2)} if eval_s is not None else {}),
              **({"phase": "online", "env_steps": env_steps} if env_steps is not None else {}),
              **({"val_action_mse": np.asarray(val_action_mse).tolist(), "scored_on": "val"}
                 if val_action_mse is not None else {})}
    atomic_write_json(run_dir / "evals" / f"step_{step:08d}.json", record)
    with open(run_dir / "eval.csv", "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if f.tell() == 0:
            writer.writerow(["step", "seed", "success"])
        for s, v in zip(seeds, per_seed):
            writer.writerow([step, s, v])
    if trackers is not None:
        trackers.evaluation(record)
    return record


def _record_offline_eval(run_dir: Path, step: int, seeds: list[int], mse: np.ndarray, run: RunSpec,
                         eval_s: float, trackers=None, scored_on: str = "val") -> dict:
    """An imported dataset's run without an env: `final_success` and `success` hold None;
    `scored_on` says which demos the MSE is over: "val" (held out) or "train" (none were held out)."""
    from steerflow.runinfo import atomic_write_json

    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": seeds,
              "metric": "val_action_mse", "val_action_mse": mse.tolist(), "mean": float(np.mean(mse)),
              "scored_on": scored_on, "success": None, "episodes": 0, "eval_s": round(eval_s, 2)}
    atomic_write_json(run_dir / "evals" / f"step_{step:08d}.json", record)
    if trackers is not None:
        trackers.evaluation(record)
    return record


def drop_evals_after(run_dir: Path, step: int) -> None:
    """A run resumed from its checkpoint at `step` redoes the evaluations after it: their records
    (written before the run was killed) go, so that none is listed twice."""
    from steerflow.runinfo import atomic_write_bytes

    for f in (run_dir / "evals").glob("step_*.json"):
        if int(f.stem.split("_")[1]) > step:
            f.unlink()
    path = run_dir / "eval.csv"
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [line for line in lines[1:] if int(line.split(",")[0]) <= step]
        if len(keep) < len(lines):
            atomic_write_bytes(path, "".join(keep).encode())


def copy_curves(src: Path, out: Path) -> None:
    """`--from`: the offline run's metrics and evaluations, so that the new run's curves start there."""
    import shutil

    (out / "evals").mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "eval.csv"):
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    for f in (src / "evals").glob("step_*.json"):
        shutil.copyfile(f, out / "evals" / f.name)


def inference_config(agent, name: str, config, overrides: dict):
    """`config` with `steerflow eval --set` overrides, which may change only the fields the agent
    declares act-only (`INFERENCE_KEYS`, e.g. LPS's `select`): the checkpoint's networks stay valid."""
    from steerflow.config import apply_overrides

    allowed = getattr(agent, "INFERENCE_KEYS", ())
    for key in overrides:
        if key not in allowed:
            raise ValueError(f"--set {key}: not an act-only field of {name}, so it cannot change on a trained "
                             f"checkpoint; {name} allows " + (", ".join(allowed) if allowed else "none"))
    return apply_overrides(config, overrides)


def restore_run(run_dir: Path, overrides: dict | None = None):
    """(run, agent, config, tc, spec, states of every seed, step, Normalization) of a run directory's
    last checkpoint: what `evaluate_run` and `policy.load` both act from. The dims come from the run's
    `normalization.json` (an imported dataset has no task to read them from); `overrides` change
    act-only config fields (`inference_config`)."""
    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.data import normalization
    from steerflow.data.tasks import parse_task
    from steerflow.encoders import load_layout

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints" / "latest.msgpack").exists():
        raise FileNotFoundError(f"{run_dir}/checkpoints/latest.msgpack missing: the run has no finished "
                                "checkpoint yet (train it first, or wait for its first checkpoint)")
    run = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
    agent, config, tc = resolve(run)
    if overrides:
        config = inference_config(agent, run.agent, config, overrides)
    norm = normalization.load(run_dir)
    if norm is None:  # an OGBench run from before normalization.json: identity, the task's dims
        task = parse_task(run.task)
        norm = normalization.Normalization.identity(task.obs_dim, task.action_dim)
    layout = load_layout(run_dir)  # image observations: the packed rows' layout
    spec = EnvSpec(obs_dim=norm.obs_dim if layout is None else layout.packed_dim, action_dim=norm.action_dim,
                   horizon=tc.horizon, obs_layout=layout)
    seed_keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in run.seeds])
    states = jax.vmap(lambda k: agent.init(k, spec, config))(seed_keys)
    states, _, step = load_checkpoint(run_dir, states, seed_keys)
    return run, agent, config, tc, spec, states, step, norm


EVAL_SEED = 10_000_019  # `steerflow eval`'s episodes (and its videos') reset seeds: EVAL_SEED·100003 + i


def restore_for_env(run_dir: Path, overrides: dict | None = None):
    """(env spec, `restore_run(run_dir)`) of a run evaluated in an env, with its stored
    normalisation checked against the env's dims; ValueError for a run scored offline."""
    from steerflow.data import normalization, source

    run = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
    task = source.eval_task(run)
    if task is None:
        raise ValueError(f"{run_dir} trained on dataset {run.dataset} without an env (--eval-task); its offline "
                         f"action MSE is in {run_dir}/evals/")
    restored = restore_run(run_dir, overrides)
    norm = restored[-1]
    if (norm.obs_dim, norm.action_dim) != (task.obs_dim, task.action_dim):
        raise ValueError(f"{run_dir}/{normalization.FILE_NAME} is for {norm.obs_dim}-D observations and "
                         f"{norm.action_dim}-D actions; {task.name} has {task.obs_dim} and {task.action_dim}")
    return task, restored


def evaluate_run(run_dir: Path, episodes: int = 50, workers: int = 2, overrides: dict | None = None) -> list[dict]:
    """Evaluate the last checkpoint of a run directory (or of each `seed_k/` child run), optionally
    with act-only config `overrides` (`inference_config`), recorded in the record and its file name."""
    from steerflow.data import source
    from steerflow.runinfo import atomic_write_json

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        children = sorted(run_dir.glob("seed_*/config.json"))
        if not children:
            raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json in it or in seed_*/")
        return [r for c in children for r in evaluate_run(c.parent, episodes, workers, overrides)]
    task, (run, agent, config, tc, spec, states, step, norm) = restore_for_env(run_dir, overrides)
    success, final_reward = evaluate_states(
        agent, states, spec, task, episodes, workers, seed=EVAL_SEED, policy=source.normalized_policy(make_policy(agent), norm),
        max_envs=tc.eval_envs, show_progress=True, desc=f"eval {run_dir.name} step {step}", with_final_reward=True)
    per_seed = success.mean(1).tolist()
    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": run.seeds,
              "episodes": episodes, "success": per_seed, "mean": float(np.mean(per_seed)),
              "final_reward": final_reward.mean(1).tolist(), "run_dir": str(run_dir), "overrides": overrides or {}}
    tag = "".join(f"_{k}={v}" for k, v in sorted((overrides or {}).items()))
    atomic_write_json(run_dir / "evals" / f"manual_step_{step:08d}_ep{episodes}{tag}.json", record)
    return [record]


def record_run(run_dir: Path, episodes: int, video_dir: Path | None = None, max_steps: int | None = None,
               show_progress: bool = True, overrides: dict | None = None) -> tuple[int, list[Path]]:
    """`steerflow eval RUN --video N`: videos of the first seed's policy at the run's last checkpoint,
    acting through the run's stored normalisation, on the episodes `evaluate_run` scores first
    (same reset seeds), with act-only config `overrides` as `evaluate_run`. Returns (checkpoint
    step, paths); default directory RUN/video."""
    from steerflow.data.source import normalized_policy
    from steerflow.video import VIDEO_DIR, record_episodes, seed_actor

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        children = sorted(c.parent.name for c in run_dir.glob("seed_*/config.json"))
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json in it" + (
            f"; it holds one run per seed ({', '.join(children)}): pass one of them" if children else ""))
    task, (run, agent, config, tc, spec, states, step, norm) = restore_for_env(run_dir, overrides)
    act = seed_actor(normalized_policy(make_policy(agent), norm), states, EVAL_SEED)
    paths = record_episodes(task, act, tc.horizon, episodes, Path(video_dir or run_dir / VIDEO_DIR), step,
                            seed=EVAL_SEED, max_steps=max_steps, show_progress=show_progress)
    return step, paths
