"""Presets, the training config, the run spec and their validation (before any work is done).

`resolve` applies a preset and then the `--set`/`--train-set` overrides; `check_run` also traces
the agent's `init` abstractly; `resume_spec` compares a stored run with the one asked for.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# The CPU protocol (benchmarks/protocol/README.md, docs/results/protocol.md): the budget at which the methods have
# left the floor on this 2-core CPU (LPS 74-88% on cube-single task 2 at 100K steps, authors' code
# and steerflow alike), on a 200-episode dataset that generates in ~4 minutes.
_CPU = {"train": dict(steps=100_000, batch_size=128, updates_per_call=20, log_every=1000, eval_every=25_000,
                      checkpoint_every=5_000, eval_episodes=50, dataset_episodes=200),
        "agent": {"*.hidden": (256, 256), "*.actor_hidden": (256, 256)}}

PRESETS: dict[str, dict] = {
    # seconds: for tests and for trying the CLI
    # seconds from nothing, data included: 3+1 episodes of 101 steps generate in about a second
    "smoke": {"train": dict(steps=40, batch_size=16, updates_per_call=10, log_every=20, eval_every=40,
                            checkpoint_every=20, eval_episodes=2, eval_workers=0, dataset_episodes=3,
                            dataset_episode_steps=101),
              "agent": {"*.hidden": (32, 32), "*.actor_hidden": (32, 32)}},
    # the CPU protocol: 100K steps, 2x256 nets, batch 128, 200-episode dataset, eval every 25K
    "cpu": _CPU,
    # `make run`: sized from the protocol's evidence to finish in 30 minutes from nothing on 2 cores
    "default": {"train": {**_CPU["train"]}, "agent": _CPU["agent"]},
    # docs/algorithms.md#evaluation-protocol: 1M steps, 4x512 nets (the agent defaults), batch 256, eval every 100K
    "paper": {"train": dict(steps=1_000_000, batch_size=256, updates_per_call=50, log_every=5_000,
                            eval_every=100_000, checkpoint_every=50_000, eval_episodes=50),
              "agent": {}},
}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 256
    horizon: int = 5  # action-chunk length H
    updates_per_call: int = 20  # jitted updates per host call (lax.scan length)
    log_every: int = 1000
    eval_every: int = 5000
    checkpoint_every: int = 5000
    eval_episodes: int = 50
    eval_workers: int = 2  # env worker processes (0: step envs in the training process)
    eval_envs: int = 10  # environments stepped together; each OGBench env holds ~200 MB
    dataset_episodes: int = 1000
    dataset_seed: int = 0
    dataset_episode_steps: int = 1001
    # offline-to-online (docs/algorithms.md#offline-to-online, train/online.py): after `steps` offline updates
    online_steps: int = 0  # env steps per seed of the online phase (0: offline only)
    online_ratio: float = -1.0  # < 0: batches from offline ∪ online (QPILOTS); R in [0, 1]: R online (LPS 0.5)
    updates_per_env_step: float = 1.0  # gradient updates per env step
    online_envs: int = 2  # environments per seed stepped together (workers: eval_workers)
    replay_capacity: int = 0  # online transitions kept per seed (0: all online_steps of them)
    # videos (steerflow.video, the `video` extra): at evaluation steps that are multiples of video_every
    video_every: int = 0  # 0: off; else MP4s of the first seed's policy into OUT/video
    video_episodes: int = 1
    video_steps: int = 0  # steps per recorded episode (0: the env's limit; rendering runs ~3 frames/s on a CPU)
    # a wall-clock budget for this process, from its start (0: none): training stops at the first host call
    # (offline) or round boundary (online) past it, then evaluates, checkpoints and writes final.json there
    max_wall_s: float = 0.0


@dataclass
class RunSpec:
    """Everything that defines a run; stored in config.json and re-read by --resume and eval."""

    agent: str
    task: str
    seeds: list[int]
    preset: str = "cpu"
    overrides: dict = field(default_factory=dict)  # agent-config overrides (`--set`)
    train_overrides: dict = field(default_factory=dict)
    base_from: str | None = None  # run directory whose frozen FM base this run steers (`frozen_base`)
    from_run: str | None = None  # finished offline run whose last checkpoint the online phase continues (`--from`)
    dataset: str | None = None  # an imported dataset (`steerflow data import`); `task` is then its eval
    reward: str | None = None  # reward mode of an imported dataset: given | sparse-success (data.imports)
    env: dict | None = None  # a user's Gymnasium env (`--env`: factory, kwargs, max_episode_steps, success); `task` is then env:FACTORY


def resolve(run: RunSpec):
    """(agent module, agent config, TrainConfig) for a run spec: preset, then overrides."""
    from steerflow.agents import get_agent
    from steerflow.config import apply_overrides

    if run.preset not in PRESETS:
        raise ValueError(f"unknown preset {run.preset!r}; choose one of {sorted(PRESETS)}")
    agent = get_agent(run.agent)
    preset = PRESETS[run.preset]
    agent_overrides = {k: v for k, v in preset["agent"].items()  # a preset sizes only the nets an agent has
                       if not k.startswith("*.") or has_field(agent.Config(), k[2:])}
    config = apply_overrides(agent.Config(), agent_overrides)
    for key, value in run.overrides.items():
        config = _apply_one(config, key, value, "--set", run.agent, TrainConfig(), "--train-set")
    train_config = apply_overrides(TrainConfig(), preset["train"])
    for key, value in run.train_overrides.items():
        train_config = _apply_one(train_config, key, value, "--train-set", run.agent, agent.Config(), "--set")
    check_train_config(train_config)
    return agent, config, train_config


def _apply_one(config, key: str, value, flag: str, agent_name: str, other, other_flag: str):
    """One override; when the key is not in this config but in the other one, say which flag it needs."""
    from steerflow.config import apply_overrides

    try:
        return apply_overrides(config, {key: value})
    except ValueError as err:
        name = key[2:] if key.startswith("*.") else key.split(".")[0]

        def has(c):
            return has_field(c, name) if key.startswith("*.") else name in {f.name for f in dataclasses.fields(c)}

        if not has(config) and has(other):
            kind = "a training-config" if other_flag == "--train-set" else f"an agent-config ({agent_name})"
            raise ValueError(f"{flag} {key}={value}: {name!r} is {kind} field; pass it with "
                             f"{other_flag} {key}={value}") from None
        raise ValueError(f"{flag} {key}={value}: {err}") from None


def check_train_config(tc: "TrainConfig") -> None:
    """Values a run cannot start with, named before any work: each value by its meaning
    (`steerflow.config.RULES`), then the ones that must agree with each other."""
    from steerflow.config import check_values

    check_values(tc, "--train-set")
    if tc.dataset_episode_steps <= tc.horizon:
        raise ValueError(f"training config dataset_episode_steps={tc.dataset_episode_steps}: must exceed "
                         f"the chunk length horizon={tc.horizon}")
    if tc.steps % tc.updates_per_call:
        raise ValueError(f"steps={tc.steps} must be a multiple of updates_per_call="
                         f"{tc.updates_per_call}")


def task_list(task: str) -> list[str]:
    """The tasks of a `--task` value: one name, or several of one domain separated by commas."""
    return [t.strip() for t in task.split(",")] if "," in task else [task]


def check_tasks(run: RunSpec) -> list[str]:
    """The tasks of a multi-task run, refused unless they are distinct OGBench tasks of one domain
    trained offline from scratch (the program shares their observations and actions)."""
    from steerflow.data.tasks import parse_task

    tasks = task_list(run.task)
    specs = [parse_task(t) for t in tasks]  # a bad name is named by parse_task
    if len(set(tasks)) < len(tasks):
        raise ValueError(f"--task {run.task}: a task is named twice")
    if len({s.domain for s in specs}) > 1:
        raise ValueError(f"--task {run.task}: the tasks of one run share their data, so they must be of one domain "
                         f"(here {sorted({s.domain for s in specs})})")
    for flag, value in (("--dataset", run.dataset), ("--env", run.env), ("--from", run.from_run),
                        ("--base-from", run.base_from)):
        if value:
            raise ValueError(f"--task {run.task} with {flag}: several tasks in one run train offline from scratch "
                             f"on generated OGBench data; run each task on its own with {flag}")
    return tasks


def check_run(run: RunSpec):
    """Validate a run before any work: task name, preset, overrides and the agent config's values
    (the agent's `init` is traced abstractly: nothing is computed). Returns `resolve(run)`; a
    multi-task run (`train.rundir`) is checked as its first task, its tasks by `check_tasks`."""
    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.config import check_values
    from steerflow.data.source import eval_task, run_dims, run_layout
    from steerflow.encoders import check_images

    if "," in run.task:
        first = check_tasks(run)[0]
        agent, config, tc = check_run(dataclasses.replace(run, task=first))
        if tc.online_steps:
            raise ValueError(f"--task {run.task} with --online-steps: online fine-tuning acts in one env; "
                             "fine-tune each task's run on its own (--from OUT/TASK)")
        return agent, config, tc
    obs_dim, action_dim = run_dims(run)  # the task name, or the imported dataset's meta and --reward
    layout = run_layout(run)  # camera keys: packed uint8 rows through the CNN encoder
    if not run.seeds:
        raise ValueError("--seeds: at least one seed is needed")
    if len(set(run.seeds)) != len(run.seeds):
        raise ValueError(f"--seeds {','.join(map(str, run.seeds))}: a seed is repeated")
    agent, config, tc = resolve(run)
    if tc.video_every:  # (checked here, not in `resolve`: a run's records stay readable without the extra)
        from steerflow.video import require_video

        require_video(f"training config video_every={tc.video_every}")
        if eval_task(run) is None:
            raise ValueError(f"training config video_every={tc.video_every}: {run.dataset} is scored offline, "
                             "there is no env to film (name one with --eval-task)")
    check_values(config, "--set")  # each value by its meaning (steerflow.config.RULES)
    check_inert_flags(run, tc)
    check_images(run.agent, config, layout)
    spec = EnvSpec(obs_dim=obs_dim, action_dim=action_dim, horizon=tc.horizon, obs_layout=layout)
    try:
        jax.eval_shape(lambda k: agent.init(k, spec, config), jax.random.PRNGKey(0))
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        shown = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "no --set overrides"
        raise ValueError(f"invalid {run.agent} config ({shown}): {err}") from None
    return agent, config, tc


#: training-config fields that do nothing unless another one is set: (field, flag, needed field, its flag).
#: (online_envs and replay_capacity are not here: an offline run keeps them for `steerflow.finetune`,
#: which continues it online with its stored settings; online_ratio and updates_per_env_step it sets anew.)
NEEDS = (("online_ratio", "--online-ratio", "online_steps", "--online-steps N"),
         ("updates_per_env_step", "--updates-per-env-step", "online_steps", "--online-steps N"),
         ("video_episodes", "--train-set video_episodes", "video_every", "--train-set video_every=N"),
         ("video_steps", "--train-set video_steps", "video_every", "--train-set video_every=N"))


def check_inert_flags(run: RunSpec, tc: TrainConfig) -> None:
    """Refuse a setting the run would silently ignore: one that only acts with another (`NEEDS`)."""
    for name, flag, needed, needed_flag in NEEDS:
        if name in run.train_overrides and not getattr(tc, needed):
            raise ValueError(f"{flag} {run.train_overrides[name]}: does nothing without {needed_flag} "
                             f"({needed} is 0); add {needed_flag} or leave it out")


def has_field(config, name: str) -> bool:
    """Whether `config` (a nested dataclass) has a field `name` at any depth (what a preset may size)."""
    return any(f.name == name or (dataclasses.is_dataclass(getattr(config, f.name))
                                  and has_field(getattr(config, f.name), name))
               for f in dataclasses.fields(config))


def resume_spec(config_path: Path, run: RunSpec, quiet: bool = False) -> RunSpec:
    """The stored run of `config_path`, checked against the one asked for: any difference is refused
    with the fields named, except a larger step count, which extends the run (and says so)."""
    try:
        stored = RunSpec(**json.loads(config_path.read_text())["run"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--resume: cannot read {config_path} ({type(err).__name__}: {err}); it is damaged: "
                         "choose another --out") from None

    def norm(d):
        return {str(k): _fmt(v) for k, v in (d or {}).items()}

    diffs = []
    for name in ("agent", "task", "preset", "dataset", "reward", "env"):
        if getattr(stored, name) != getattr(run, name):
            diffs.append(f"--{name}: stored {getattr(stored, name)}, now {getattr(run, name)}")
    if list(map(int, stored.seeds)) != list(map(int, run.seeds)):
        diffs.append(f"--seeds: stored {','.join(map(str, stored.seeds))}, now {','.join(map(str, run.seeds))}")
    for flag, a, b in (("--set", norm(stored.overrides), norm(run.overrides)),
                       ("--train-set", norm(stored.train_overrides), norm(run.train_overrides))):
        if flag == "--train-set":  # the step counts are compared resolved, below; a process's own budget is its own
            for name in (*EXTENSIBLE, *PER_PROCESS):
                a.pop(name, None), b.pop(name, None)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{flag} {k}: stored {a.get(k, '(not set)')}, now {b.get(k, '(not set)')}")
    if diffs:
        raise ValueError(f"--resume: {config_path.parent} was trained with other settings ({'; '.join(diffs)}). "
                         "Resume with the stored ones (the first run's flags) or choose another --out; the one "
                         "change --resume allows is a larger --steps, which extends the run")
    old, new = resolve(stored)[2], resolve(run)[2]
    for name, flag in EXTENSIBLE.items():
        old_n, new_n = getattr(old, name), getattr(new, name)
        if new_n < old_n:
            raise ValueError(f"--resume: {config_path.parent} was trained for {old_n} {name.replace('_', ' ')}; "
                             f"{flag} {new_n} would shorten it (only raising {flag} is allowed: it extends the run)")
        if new_n > old_n:
            if name == "steps" and old.online_steps:
                raise ValueError(f"--resume: {config_path.parent} has an online phase; its offline --steps "
                                 "cannot be raised any more")
            if not quiet:
                print(f"extending {config_path.parent} from {old_n} to {new_n} {name.replace('_', ' ')} ({flag} "
                      "raised on --resume; everything else as stored)", flush=True)
            stored.train_overrides = {**stored.train_overrides, name: str(new_n)}
    stored.train_overrides = {**{k: v for k, v in stored.train_overrides.items() if k not in PER_PROCESS},
                              **{k: v for k, v in run.train_overrides.items() if k in PER_PROCESS}}
    return stored


#: step counts `--resume` may raise (it extends the run), with their flags
EXTENSIBLE = {"steps": "--steps", "online_steps": "--online-steps"}
#: settings of the process, not of the run: `--resume` takes the new value (a wall budget per process)
PER_PROCESS = ("max_wall_s",)


def _fmt(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


ONLINE_FIELDS = ("online_steps", "online_ratio", "updates_per_env_step", "online_envs", "replay_capacity")
# how often a run logs, evaluates and checkpoints, and with how many episodes and workers: none of
# them changes what is trained (evaluation has its own keys; resumes are exact), so `--from` may
# change them (e.g. evaluate the online phase more often than the offline one was)
CADENCE_FIELDS = ("log_every", "eval_every", "checkpoint_every", "eval_episodes", "eval_workers", "eval_envs")


def from_spec(run: RunSpec) -> RunSpec:
    """`--from RUN_DIR`: the run asked for, checked against the finished offline run it continues
    (same agent, task, preset, seeds and settings but the online ones), its offline step count set
    to that run's last checkpoint."""
    from .checkpoint import checkpoint_path, read_step

    src = Path(run.from_run)
    if not (src / "config.json").is_file() or not checkpoint_path(src).is_file():
        raise FileNotFoundError(f"--from {src}: not a run directory with a checkpoint (config.json and "
                                "checkpoints/latest.msgpack are needed)")
    stored = RunSpec(**json.loads((src / "config.json").read_text())["run"])
    if resolve(stored)[2].online_steps:
        raise ValueError(f"--from {src}: that run has an online phase already; continue it with --resume "
                         "(and a larger --online-steps) instead")

    def norm(d):
        return {str(k): _fmt(v) for k, v in (d or {}).items() if k not in ONLINE_FIELDS + CADENCE_FIELDS + ("steps",)}

    diffs = [f"--{n}: there {getattr(stored, n)}, here {getattr(run, n)}" for n in ("agent", "task", "preset", "env")
             if getattr(stored, n) != getattr(run, n)]
    if list(map(int, stored.seeds)) != list(map(int, run.seeds)):
        diffs.append(f"--seeds: there {','.join(map(str, stored.seeds))}, here {','.join(map(str, run.seeds))}")
    for flag, a, b in (("--set", norm(stored.overrides), norm(run.overrides)),
                       ("--train-set", norm(stored.train_overrides), norm(run.train_overrides))):
        diffs += [f"{flag} {k}: there {a.get(k, '(not set)')}, here {b.get(k, '(not set)')}"
                  for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        raise ValueError(f"--from {src}: that run was trained with other settings ({'; '.join(diffs)}); pass the "
                         "same flags as it had, plus the online ones")
    return dataclasses.replace(run, train_overrides={**run.train_overrides, "steps": str(read_step(src))})
