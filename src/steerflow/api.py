"""The library use in a few lines, on the code paths the CLI runs:

    import steerflow
    run = steerflow.train_agent("lps", "cube-single-task2", preset="smoke", out="runs/lps-smoke")
    policy = steerflow.load_policy(run)
    env = steerflow.make_env("cube-single-task2")
    chunk = policy.act(env.reset(seed=0)[0])  # (H, A) actions for the next H steps

`train_agent` is `steerflow train` (same RunSpec, preset resolution, checks and run directory);
`export_run` is `steerflow export`; `load_policy` is `steerflow.policy.load`.
"""

from __future__ import annotations

from pathlib import Path


def task(name: str):
    """The TaskSpec of `DOMAIN-taskN[-sparse]` (obs_dim, action_dim, episode_length, ...)."""
    from steerflow.data.tasks import parse_task

    return parse_task(name)


def make_env(name: str, **env_kwargs):
    """The task's OGBench environment (gymnasium API)."""
    from steerflow.data.tasks import make_env as make

    return make(task(name), **env_kwargs)


def train_agent(agent: str, task: str, preset: str = "cpu", seeds=(0,), out=None, steps: int | None = None,
          overrides: dict | None = None, train_overrides: dict | None = None, resume: bool = False,
          quiet: bool = False, log=("csv",)) -> Path:
    """Train `agent` on `task` (all seeds vmapped in this process) into `out` (default
    runs/AGENT-TASK-PRESET) and return the run directory. `overrides` are agent-config
    `--set KEY=VALUE`s, `train_overrides` training-config `--train-set`s, `steps` `--steps`, `log`
    the trackers fed as it trains (`--log`: csv, tensorboard, wandb)."""
    from steerflow.cli import parse_seed_list
    from steerflow.train import RunSpec, check_run, train as run_training

    seeds = parse_seed_list(",".join(map(str, seeds)) if not isinstance(seeds, str) else seeds)
    train_overrides = {k: _text(v) for k, v in (train_overrides or {}).items()}
    if steps is not None:
        train_overrides["steps"] = str(steps)
    run = RunSpec(agent=agent, task=task, seeds=seeds, preset=preset,
                  overrides={k: _text(v) for k, v in (overrides or {}).items()}, train_overrides=train_overrides)
    out = Path(out) if out is not None else Path("runs") / f"{agent}-{task}-{preset}"
    check_run(run)
    run_training(run, out, resume=resume, quiet=quiet, log=log)
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
