"""The library use in a few lines, on the code paths the CLI runs:

    import steerflow
    run = steerflow.train_agent("lps", "cube-single-task2", preset="smoke", out="runs/lps-smoke")
    policy = steerflow.load_policy(run)
    env = steerflow.make_env("cube-single-task2")
    chunk = policy.act(env.reset(seed=0)[0])  # (H, A) actions for the next H steps

On your own demonstrations and env (`steerflow data import`, then):

    run = steerflow.train_agent("lps", dataset="my-demos", reward="sparse-success",
                                env="my_robot.envs:make_env", out="runs/lps-mine")
    online = steerflow.finetune(run, online_steps=20_000)  # in the same env, balanced 0.5 batches

`train_agent` is `steerflow train` (same RunSpec, preset resolution, checks and run directory);
`finetune` is `steerflow train --from RUN --online-steps N`;
`export_run` is `steerflow export`; `load_policy` is `steerflow.policy.load`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def task(name: str):
    """The TaskSpec of `DOMAIN-taskN[-sparse]` (obs_dim, action_dim, episode_length, ...)."""
    from steerflow.data.tasks import parse_task

    return parse_task(name)


def make_env(name: str, **env_kwargs):
    """The task's OGBench environment (gymnasium API)."""
    from steerflow.data.tasks import make_env as make

    return make(task(name), **env_kwargs)


def train_agent(agent: str, task: str | None = None, preset: str = "cpu", seeds=(0,), out=None,
                steps: int | None = None, overrides: dict | None = None, train_overrides: dict | None = None,
                resume: bool = False, quiet: bool = False, dataset: str | None = None, reward: str | None = None,
                env: str | None = None, env_kwargs: dict | None = None, max_episode_steps: int | None = None,
                success: str | None = None, log=("csv",)) -> Path:
    """Train `agent` on `task`, or on an imported `dataset` evaluated in your `env` ("module:factory",
    its `env_kwargs`, time limit and success as `--env`, `--env-set`, `--max-episode-steps`,
    `--success`), all seeds vmapped in this process, into `out` (default runs/AGENT-TASK-PRESET);
    returns the run directory. `overrides` are agent-config `--set KEY=VALUE`s, `train_overrides`
    training-config `--train-set`s, `steps` `--steps`, `log` the trackers fed as it trains (`--log`:
    csv, tensorboard, wandb)."""
    from steerflow.cli import Train
    from steerflow.train import check_run, train as run_training

    flags = Train(agent=agent, task=task, seeds=seeds if isinstance(seeds, str) else ",".join(map(str, seeds)),
                  steps=steps, preset=preset, out=None if out is None else Path(out), dataset=dataset, reward=reward,
                  env=env, env_set=[[f"{k}={json.dumps(v)}" for k, v in (env_kwargs or {}).items()]],
                  max_episode_steps=max_episode_steps, success=success,
                  set=[[f"{k}={_text(v)}" for k, v in (overrides or {}).items()]],
                  train_set=[[f"{k}={_text(v)}" for k, v in (train_overrides or {}).items()]])
    run, out = flags.spec(), flags.out_dir
    check_run(run)
    run_training(run, out, resume=resume, quiet=quiet, log=log)
    return out


def finetune(run_dir, online_steps: int, online_ratio: float = 0.5, updates_per_env_step: float = 1.0,
             out=None, resume: bool = False, quiet: bool = False) -> Path:
    """Continue a finished offline run online, in the env it was evaluated in (its `--env` or OGBench
    task), with `online_ratio` of each batch from the online replay (LPS: 0.5): `steerflow train
    --from RUN_DIR --online-steps N` into `out` (default RUN_DIR-online); returns that directory."""
    from steerflow.train import RunSpec, check_run, train as run_training
    from steerflow.train.presets import from_spec

    run_dir = Path(run_dir)
    stored = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
    run = dataclasses.replace(stored, from_run=str(run_dir), train_overrides={
        **stored.train_overrides, "online_steps": str(online_steps), "online_ratio": str(online_ratio),
        "updates_per_env_step": str(updates_per_env_step)})
    check_run(from_spec(run))
    out = Path(out) if out is not None else run_dir.with_name(run_dir.name + "-online")
    run_training(run, out, resume=resume, quiet=quiet)
    return out


def load_policy(path, seed: int = 0, **kwargs):
    """`steerflow.policy.load`: the policy of a run directory or an exported artifact."""
    from steerflow.policy import load

    return load(path, seed=seed, **kwargs)


def export_run(run_dir, format: str, out) -> Path:
    """`steerflow export RUN_DIR --format onnx|stablehlo --out DIR`."""
    from steerflow.export import export_run as export

    return export(Path(run_dir), format, Path(out))


def _text(value) -> str:
    """An override value as the CLI would pass it (`--set a=1,2`)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
