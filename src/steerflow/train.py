"""Offline training loop, generic over the agent contract (`agents.common`).

Per host call the trainer runs `updates_per_call` jitted updates in a `lax.scan`, with batches
sampled on the device from the valid-start chunk sampler; the seeds of a run are `vmap`ped in
one process (`parallel="vmap"`, the GPU lever) or run as one single-threaded process per core
(`parallel="processes"`, measured faster on a 2-core CPU). A run directory holds:

    config.json      resolved agent + training config, preset and overrides
    run_info.json    git commit, library versions, device, dataset fingerprint
    metrics.csv      step, seed, losses, steps/s (one row per seed per log point)
    evals/step_XXXXXXXX.json, eval.csv    success per seed at each evaluation point
    checkpoints/latest.msgpack            all seeds' agent states + sampler keys (atomic)
    final.json       the last evaluation: agent, task, preset, steps, seeds, final_success, mean
    failed.json      only when the losses became non-finite: step, losses (`report` lists the run
                     as failed and leaves it out); the last good checkpoint stays

`check_run` validates a run (task, preset, overrides, agent config values via an abstract
`init`) before any data is loaded or anything is written. `--resume` refuses settings that differ
from the stored ones, except a larger step count, which extends the run. SIGINT/SIGTERM stop the
loop after its current host call with a checkpoint at that step (resuming from it ends
bit-identical to an uninterrupted run); see `steerflow.errors`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The CPU protocol (issue 9, benchmarks/protocol/README.md): the budget at which the methods have
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
    # SPEC §6: 1M steps, 4x512 nets (the agent defaults), batch 256, eval every 100K
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
    dataset: str | None = None  # an imported dataset (`steerflow data import`); `task` is then its eval
    reward: str | None = None  # reward mode of an imported dataset: given | sparse-success (data.imports)


def resolve(run: RunSpec):
    """(agent module, agent config, TrainConfig) for a run spec: preset, then overrides."""
    from steerflow.agents import get_agent
    from steerflow.config import apply_overrides

    if run.preset not in PRESETS:
        raise ValueError(f"unknown preset {run.preset!r}; choose one of {sorted(PRESETS)}")
    agent = get_agent(run.agent)
    preset = PRESETS[run.preset]
    agent_overrides = {k: v for k, v in preset["agent"].items()  # a preset sizes only the nets an agent has
                       if not k.startswith("*.") or _has_field(agent.Config(), k[2:])}
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
            return _has_field(c, name) if key.startswith("*.") else name in {f.name for f in dataclasses.fields(c)}

        if not has(config) and has(other):
            kind = "a training-config" if other_flag == "--train-set" else f"an agent-config ({agent_name})"
            raise ValueError(f"{flag} {key}={value}: {name!r} is {kind} field; pass it with "
                             f"{other_flag} {key}={value}") from None
        raise ValueError(f"{flag} {key}={value}: {err}") from None


def check_train_config(tc: "TrainConfig") -> None:
    """Values a run cannot start with, named before any work."""
    positive = ("steps", "batch_size", "horizon", "updates_per_call", "log_every", "eval_every",
                "checkpoint_every", "eval_episodes", "eval_envs", "dataset_episodes")
    for name in positive:
        if getattr(tc, name) < 1:
            raise ValueError(f"training config {name}={getattr(tc, name)}: expected a positive integer")
    if tc.eval_workers < 0:
        raise ValueError(f"training config eval_workers={tc.eval_workers}: expected 0 or more")
    if tc.dataset_episode_steps <= tc.horizon:
        raise ValueError(f"training config dataset_episode_steps={tc.dataset_episode_steps}: must exceed "
                         f"the chunk length horizon={tc.horizon}")
    if tc.steps % tc.updates_per_call:
        raise ValueError(f"steps={tc.steps} must be a multiple of updates_per_call="
                         f"{tc.updates_per_call}")


def check_run(run: RunSpec):
    """Validate a run before any work: task name, preset, overrides and the agent config's values
    (the agent's `init` is traced abstractly: nothing is computed). Returns `resolve(run)`."""
    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.data.source import run_dims

    obs_dim, action_dim = run_dims(run)  # the task name, or the imported dataset's meta and --reward
    if not run.seeds:
        raise ValueError("--seeds: at least one seed is needed")
    if len(set(run.seeds)) != len(run.seeds):
        raise ValueError(f"--seeds {','.join(map(str, run.seeds))}: a seed is repeated")
    agent, config, tc = resolve(run)
    spec = EnvSpec(obs_dim=obs_dim, action_dim=action_dim, horizon=tc.horizon)
    try:
        jax.eval_shape(lambda k: agent.init(k, spec, config), jax.random.PRNGKey(0))
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        shown = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "no --set overrides"
        raise ValueError(f"invalid {run.agent} config ({shown}): {err}") from None
    return agent, config, tc


def _has_field(config, name: str) -> bool:
    return any(f.name == name or (dataclasses.is_dataclass(getattr(config, f.name))
                                  and _has_field(getattr(config, f.name), name))
               for f in dataclasses.fields(config))


# --------------------------------------------------------------------------- jitted core

def make_train_call(agent, batch_size: int, updates_per_call: int):
    """jit(scan over `updates_per_call` of vmap-over-seeds(sample → update)).

    The dataset is an argument, not a closure constant, so it stays one device buffer instead of
    being baked into the compiled program."""
    import jax
    import jax.numpy as jnp

    from steerflow.data.chunks import sample_chunks

    @jax.jit
    def train_call(states, keys, ds):
        def one_seed(state, key):
            key, k_batch = jax.random.split(key)
            state, metrics = agent.update(state, sample_chunks(ds, k_batch, batch_size))
            return state, key, metrics

        def body(carry, _):
            states, keys = carry
            states, keys, metrics = jax.vmap(one_seed)(states, keys)
            return (states, keys), metrics

        (states, keys), metrics = jax.lax.scan(body, (states, keys), None, length=updates_per_call)
        return states, keys, jax.tree.map(lambda m: jnp.mean(m, 0), metrics)

    return train_call


def make_policy(agent):
    """jit(act) for one seed's state: obs (E, obs_dim) → chunks (E, d)."""
    import jax

    return jax.jit(agent.act)


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: Path, states, keys, step: int) -> None:
    from flax import serialization

    from steerflow.runinfo import atomic_write_bytes

    payload = serialization.to_bytes({"states": states, "keys": keys, "step": np.int64(step)})
    atomic_write_bytes(run_dir / "checkpoints" / "latest.msgpack", payload)


def load_checkpoint(run_dir: Path, states, keys):
    from flax import serialization

    path = run_dir / "checkpoints" / "latest.msgpack"
    try:
        restored = serialization.from_bytes({"states": states, "keys": keys, "step": np.int64(0)},
                                            path.read_bytes())
    except Exception as err:  # a checkpoint from another config or a damaged file
        raise ValueError(f"cannot restore checkpoint {path}: {err}. It does not match this run's "
                         "config (or is damaged); start a new run directory instead of --resume.") from err
    return restored["states"], restored["keys"], int(restored["step"])


# --------------------------------------------------------------------------- evaluation

def evaluate_states(agent, states, spec, task, episodes: int, workers: int, seed: int, policy=None,
                    pool=None, max_envs: int = 10, show_progress: bool = False, desc: str = "eval",
                    should_stop=None) -> np.ndarray:
    """Success (S, episodes) of every seed's policy; each seed's episodes run in waves of at most
    `max_envs` environments stepped together, one batched `act` call per chunk. With
    `show_progress`, a bar shows episodes done, success so far and the ETA; `should_stop()` true
    between chunks aborts it (`_EvalStopped`)."""
    import jax
    from tqdm import tqdm

    from steerflow.evaluate import EnvPool, run_episodes

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
            raise _EvalStopped
        return False

    try:
        for i in range(num_seeds):
            state = jax.tree.map(lambda x: x[i], states)

            def act(obs):
                nonlocal key
                stop()
                key, sub = jax.random.split(key)
                return np.asarray(policy(state, np.asarray(obs, np.float32), sub))

            results.append(run_episodes(pool, act, spec.horizon, episodes, seed=seed, progress=progress)["success"])
    finally:
        bar.close()
        if own_pool:
            pool.close()
    return np.stack(results)


def _record_eval(run_dir: Path, step: int, seeds: list[int], success: np.ndarray, run: RunSpec,
                 eval_s: float | None = None) -> dict:
    from steerflow.runinfo import atomic_write_json

    per_seed = success.mean(1).tolist()
    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": seeds,
              "episodes": int(success.shape[1]), "success": per_seed, "mean": float(np.mean(per_seed)),
              **({"eval_s": round(eval_s, 2)} if eval_s is not None else {})}
    atomic_write_json(run_dir / "evals" / f"step_{step:08d}.json", record)
    with open(run_dir / "eval.csv", "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if f.tell() == 0:
            writer.writerow(["step", "seed", "success"])
        for s, v in zip(seeds, per_seed):
            writer.writerow([step, s, v])
    return record


def _record_offline_eval(run_dir: Path, step: int, seeds: list[int], mse: np.ndarray, run: RunSpec,
                         eval_s: float) -> dict:
    """An imported dataset's run without an env: `final_success` and `success` hold None."""
    from steerflow.runinfo import atomic_write_json

    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": seeds,
              "metric": "val_action_mse", "val_action_mse": mse.tolist(), "mean": float(np.mean(mse)),
              "success": None, "episodes": 0, "eval_s": round(eval_s, 2)}
    atomic_write_json(run_dir / "evals" / f"step_{step:08d}.json", record)
    return record


# --------------------------------------------------------------------------- metrics csv

class MetricsLog:
    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.fields: list[str] | None = None
        if resume_step and path.exists():  # drop rows written after the checkpoint we resume from
            with open(path) as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                self._rewrite(keep)
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows):
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, seeds: list[int], metrics: dict, steps_per_s: float) -> None:
        names = sorted(metrics)
        if self.fields is None:
            self.fields = ["step", "seed", "steps_per_s", *names]
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore", lineterminator="\n")
            if f.tell() == 0:
                writer.writeheader()
            for i, seed in enumerate(seeds):
                writer.writerow({"step": step, "seed": seed, "steps_per_s": round(steps_per_s, 2),
                                 **{k: float(metrics[k][i]) for k in names}})


# --------------------------------------------------------------------------- the run

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
    for name in ("agent", "task", "preset", "dataset", "reward"):
        if getattr(stored, name) != getattr(run, name):
            diffs.append(f"--{name}: stored {getattr(stored, name)}, now {getattr(run, name)}")
    if list(map(int, stored.seeds)) != list(map(int, run.seeds)):
        diffs.append(f"--seeds: stored {','.join(map(str, stored.seeds))}, now {','.join(map(str, run.seeds))}")
    for flag, a, b in (("--set", norm(stored.overrides), norm(run.overrides)),
                       ("--train-set", norm(stored.train_overrides), norm(run.train_overrides))):
        if flag == "--train-set":  # the step count is compared resolved, below
            a.pop("steps", None), b.pop("steps", None)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{flag} {k}: stored {a.get(k, '(not set)')}, now {b.get(k, '(not set)')}")
    if diffs:
        raise ValueError(f"--resume: {config_path.parent} was trained with other settings ({'; '.join(diffs)}). "
                         "Resume with the stored ones (the first run's flags) or choose another --out; the one "
                         "change --resume allows is a larger --steps, which extends the run")
    old_steps, new_steps = resolve(stored)[2].steps, resolve(run)[2].steps
    if new_steps < old_steps:
        raise ValueError(f"--resume: {config_path.parent} was trained for {old_steps} steps; --steps "
                         f"{new_steps} would shorten it (only raising --steps is allowed: it extends the run)")
    if new_steps > old_steps:
        if not quiet:
            print(f"extending {config_path.parent} from {old_steps} to {new_steps} steps (--steps raised on "
                  "--resume; everything else as stored)", flush=True)
        stored.train_overrides = {**stored.train_overrides, "steps": str(new_steps)}
    return stored


class _EvalStopped(Exception):
    """A signal arrived during an in-training evaluation."""


def make_finite_tracker():
    """jit((bad_step, bad_values, metrics, step) → same): the first host call whose metrics hold a
    NaN or inf, and its metrics, kept on the device so that the loop never waits for it."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def track(bad_step, bad_values, metrics, step):
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
        first = (bad_step < 0) & ~ok
        return jnp.where(first, step, bad_step), jax.tree.map(lambda a, b: jnp.where(first, b, a), bad_values, metrics)

    return track


def _diverged(out: Path, run: RunSpec, bad_step: int, values: dict, last_good: int | None) -> "Exception":
    from steerflow.errors import TrainingDiverged
    from steerflow.runinfo import atomic_write_json

    bad = {k: [str(float(x)) for x in np.atleast_1d(v)] for k, v in values.items() if not np.all(np.isfinite(v))}
    losses = [k for k in bad if "loss" in k] or list(bad)  # name the losses; other metrics follow them
    shown = ", ".join(f"{k}={next(x for x in bad[k] if not np.isfinite(float(x)))}" for k in losses)
    seeds = sorted({s for k in losses for s, x in zip(run.seeds, bad[k]) if not np.isfinite(float(x))})
    shown += f" (seed {','.join(map(str, seeds))})"
    kept = (f"the last good checkpoint (step {last_good}) is kept in {out / 'checkpoints' / 'latest.msgpack'}"
            if last_good is not None else "no checkpoint had been written yet")
    message = (f"training diverged: non-finite loss {shown} in the updates up to step {bad_step}; stopped, "
               f"{kept}; the run is marked failed in {out / 'failed.json'} and `steerflow report` leaves it out. "
               "Lower the learning rate or check the data")
    atomic_write_json(out / "failed.json", {"status": "diverged", "step": bad_step, "losses": bad,
                                            "last_checkpoint_step": last_good, "message": message})
    return TrainingDiverged(message)


def train(run: RunSpec, out: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train every seed of `run` in this process (vmapped) and return the final record. A run
    directory this call created is removed again when it fails before its first checkpoint (a
    diverged run keeps it: `failed.json` says what happened)."""
    from steerflow.errors import TrainingDiverged

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory (it must be a directory)")
    created = not out.exists()
    try:
        return _train(run, out, resume, quiet)
    except TrainingDiverged:
        raise
    except BaseException:
        if created and out.is_dir() and not (out / "checkpoints" / "latest.msgpack").exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(run: RunSpec, out: Path, resume: bool, quiet: bool) -> dict:
    import jax
    from tqdm import tqdm

    from steerflow.agents.common import EnvSpec
    from steerflow.config import to_dict
    from steerflow.data.chunks import build_chunk_dataset
    from steerflow.data import normalization, source
    from steerflow.evaluate import EnvPool
    from steerflow.errors import Interrupted, deferred_signals
    from steerflow.runinfo import atomic_write_json, device_description, git_commit, library_versions

    config_path = out / "config.json"
    has_ckpt = (out / "checkpoints" / "latest.msgpack").exists()
    if resume and config_path.exists():
        run = resume_spec(config_path, run, quiet)  # the stored settings (steps possibly raised)
    elif has_ckpt and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    agent, config, tc = check_run(run)  # before the data load: a bad value fails at once
    task = source.eval_task(run)  # None: an imported dataset scored offline on its held-out demos

    train_data, val_data, data_info, norm = source.load_run_data(run, tc, workers=os.cpu_count() or 1)
    stored_norm = normalization.load(out) if resume else None
    if stored_norm is not None:  # a checkpoint acts in the units of the data it was trained on
        normalization.check_same(stored_norm, norm, f"--resume {out} on {run.dataset or run.task}")
    critic_cfg = getattr(config, "critic", None)
    discount = critic_cfg.discount if critic_cfg else 0.99
    ds = build_chunk_dataset(train_data, tc.horizon, discount)
    spec = EnvSpec(obs_dim=int(train_data["observations"].shape[1]),
                   action_dim=int(train_data["actions"].shape[1]), horizon=tc.horizon)

    seeds = list(run.seeds)
    seed_keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in seeds])
    init_keys, keys = jax.vmap(lambda k: jax.random.split(k))(seed_keys).transpose((1, 0, 2))
    states = jax.vmap(lambda k: agent.init(k, spec, config))(init_keys)
    if run.base_from and not (resume and has_ckpt):
        from steerflow.frozen_base import load_into

        states = load_into(states, Path(run.base_from), seeds, spec.obs_dim, spec.chunk_dim)
    step = 0
    if resume and has_ckpt:
        states, keys, step = load_checkpoint(out, states, keys)
        if not quiet:
            print(f"resuming {out} from step {step}")

    out.mkdir(parents=True, exist_ok=True)  # after the checkpoint is read: a bad one leaves the run as it was
    normalization.save(out, norm)  # what the evaluator and `policy.load` apply to this run's policy
    atomic_write_json(config_path, {"run": dataclasses.asdict(run), "agent_config": to_dict(config),
                                    "train_config": to_dict(tc)})
    atomic_write_json(out / "run_info.json", {
        "commit": git_commit(), "versions": library_versions(), "device": device_description(),
        "dataset": data_info, "command": " ".join(sys.argv)})
    log = MetricsLog(out / "metrics.csv", step)
    (out / "failed.json").unlink(missing_ok=True)  # a resumed run starts over from its last good checkpoint

    train_call = make_train_call(agent, tc.batch_size, tc.updates_per_call)
    policy = make_policy(agent)
    track = make_finite_tracker()
    pool = EnvPool(task, min(tc.eval_episodes, tc.eval_envs), tc.eval_workers) if task else None
    if task is None:  # offline metric on the held-out demos (the training ones when there are none)
        offline = val_data if val_data is not None else train_data
        offline_ds = build_chunk_dataset(offline, tc.horizon, discount)
        offline_starts = source.offline_eval_starts(offline, tc.horizon)
    record = None
    run_start = time.perf_counter()
    saved_step = step if resume and has_ckpt else None  # the last good checkpoint on disk
    bad_step, bad_values = jax.numpy.int32(-1), None

    def due(every: int) -> bool:
        return step % every == 0 or step == tc.steps

    def checkpoint():
        nonlocal saved_step
        if saved_step != step:
            save_checkpoint(out, states, keys, step)
            saved_step = step

    def check_finite():
        if bad_values is not None and int(bad_step) >= 0:
            raise _diverged(out, run, int(bad_step), jax.device_get(bad_values), saved_step)

    def evaluate(received) -> dict:
        eval_start = time.perf_counter()
        if task is None:
            mse = source.offline_action_mse(agent, states, offline_ds, offline_starts, policy, seed=step)
            rec = _record_offline_eval(out, step, seeds, mse, run, time.perf_counter() - eval_start)
            bar.write(f"step {step}: held-out action MSE {rec['mean']:.4f} per seed {np.round(mse, 4).tolist()}")
            return rec
        success = evaluate_states(agent, states, spec, task, tc.eval_episodes, tc.eval_workers, seed=step,
                                  policy=source.normalized_policy(policy, norm), pool=pool, show_progress=not quiet,
                                  desc=f"eval at step {step}", should_stop=lambda: bool(received))
        rec = _record_eval(out, step, seeds, success, run, eval_s=time.perf_counter() - eval_start)
        bar.write(f"step {step}: success {rec['mean']:.3f} per seed {np.round(rec['success'], 3).tolist()}")
        return rec

    bar = tqdm(total=tc.steps, initial=step, desc=f"{run.agent} {run.task} seeds={seeds}",
               disable=quiet, dynamic_ncols=True, smoothing=0.05)
    try:
        window_t, window_steps = time.perf_counter(), 0
        with deferred_signals() as received:  # SIGINT/SIGTERM: stop after this host call, checkpointed
            try:
                if step and due(tc.eval_every) and not (out / "evals" / f"step_{step:08d}.json").exists():
                    record = evaluate(received)  # an interrupt had cut this step's evaluation short
                first_call = True
                while step < tc.steps and not received:
                    states, keys, metrics = train_call(states, keys, ds)
                    step += tc.updates_per_call
                    if bad_values is None:
                        bad_values = jax.tree.map(jax.numpy.zeros_like, metrics)
                    bad_step, bad_values = track(bad_step, bad_values, metrics, step)
                    if first_call:  # steps/s leaves out the compilation, which the first call includes
                        jax.block_until_ready(states)
                        window_t, window_steps, first_call = time.perf_counter(), -tc.updates_per_call, False
                    window_steps += tc.updates_per_call
                    bar.update(tc.updates_per_call)
                    if due(tc.log_every) or due(tc.eval_every) or due(tc.checkpoint_every) or received:
                        check_finite()  # never log, evaluate or checkpoint a diverged state
                    if due(tc.log_every):
                        metrics = jax.device_get(metrics)
                        elapsed = time.perf_counter() - window_t
                        sps = window_steps / elapsed if window_steps and elapsed > 0 else float("nan")
                        log.write(step, seeds, metrics, sps)
                        bar.set_postfix({"steps/s": f"{sps:.0f}", **{k: f"{np.mean(v):.3g}" for k, v in metrics.items()
                                                                     if k in ("critic_loss", "mf_loss", "fm_loss", "actor_q")}})
                        window_t, window_steps = time.perf_counter(), 0
                    if due(tc.eval_every):
                        record = evaluate(received)
                        window_t = time.perf_counter()  # evaluation time does not count as training speed
                    if due(tc.checkpoint_every):
                        checkpoint()
            except _EvalStopped:
                pass
            if received:
                check_finite()  # the signal may have come after this call's check
                checkpoint()
                raise Interrupted(received[0], step=step, total=tc.steps, run_dir=out)
    finally:
        bar.close()  # before any error message: it starts on a line of its own
        if pool is not None:
            pool.close()
    if record is None:  # resumed a run that had already finished
        record = json.loads((out / "evals" / f"step_{tc.steps:08d}.json").read_text())
    final = {"agent": run.agent, "task": run.task, "preset": run.preset, "steps": tc.steps, "seeds": seeds,
             "final_success": record["success"], "mean": record["mean"], "episodes": record["episodes"],
             **({"metric": record.get("metric", "success"), "dataset": run.dataset, "reward": data_info.get("reward")}
                if run.dataset else {}),
             **({"val_action_mse": record["val_action_mse"]} if "val_action_mse" in record else {}),
             "device": device_description(), "commit": git_commit(), "overrides": run.overrides,
             "wall_s_this_process": round(time.perf_counter() - run_start, 1)}  # since the loop (re)started
    atomic_write_json(out / "final.json", final)
    return final


SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def single_thread_env() -> dict[str, str]:
    """Environment of one of several training processes sharing this machine: one CPU thread each
    (measured faster than sharing the threads on the 2-core CPU) and no up-front GPU allocation."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA_FLAGS}".strip()
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def train_command(run: RunSpec, out: Path, resume: bool = False) -> list[str]:
    """argv of the `steerflow train` process that trains all of `run`'s seeds, vmapped, into `out`."""
    from steerflow.data.imports import DATASET_PREFIX

    if run.dataset:  # `task` is the evaluation env (`--eval-task`), or the offline metric's placeholder
        where = ["--dataset", run.dataset, *(["--reward", run.reward] if run.reward else []),
                 *([] if run.task.startswith(DATASET_PREFIX) else ["--eval-task", run.task])]
    else:
        where = ["--task", run.task]
    cmd = [sys.executable, "-m", "steerflow.cli", "train", "--agent", run.agent, *where,
           "--seeds", ",".join(map(str, run.seeds)), "--preset", run.preset, "--out", str(out),
           "--parallel", "vmap", *(["--resume"] if resume else []),
           *(["--base-from", run.base_from] if run.base_from else [])]
    # one flag with every value: a repeated `--set` flag would keep only its last value
    if run.overrides:
        cmd += ["--set", *(f"{k}={_fmt(v)}" for k, v in run.overrides.items())]
    if run.train_overrides:
        cmd += ["--train-set", *(f"{k}={_fmt(v)}" for k, v in run.train_overrides.items())]
    return cmd


def free_core(busy: set[int]) -> int | None:
    """A CPU of this process's affinity set not in `busy` (None when all are taken)."""
    return next((c for c in sorted(os.sched_getaffinity(0)) if c not in busy), None)


def pinned_to(core: int | None):
    """preexec_fn pinning a child process to one CPU. Single-threaded processes sharing this 2-core
    machine unpinned lose ~20% of the total throughput to migrations (benchmarks/protocol/README.md)."""
    return None if core is None else (lambda: os.sched_setaffinity(0, {core}))


def run_commands(jobs, max_procs: int, env: dict | None = None, on_start=None, on_finish=None,
                 poll_s: float = 0.5, grace_s: float = 20.0, pin: bool = False) -> dict:
    """Run `jobs`, (name, argv, log path) triples, at most `max_procs` at a time, each one's stdout
    and stderr appended to its log; returns {name: exit code}. With `pin`, each process is bound
    to a CPU of its own while fewer run than there are CPUs. `on_start(name, argv, log)` and
    `on_finish(name, code)` are called as they start and end. On Ctrl-C (or SIGTERM) every running
    child's process group gets SIGINT, so it stops as an interrupted `steerflow train` does (its
    last checkpoint stays for --resume), SIGKILL after `grace_s`; then the interrupt propagates."""
    import shlex
    import signal
    import threading

    pending, running, codes = list(jobs), [], {}
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while pending or running:
            while pending and len(running) < max_procs:
                name, cmd, log = pending.pop(0)
                Path(log).parent.mkdir(parents=True, exist_ok=True)
                logf = open(log, "ab")
                logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(map(str, cmd))}\n".encode())
                logf.flush()
                if on_start:
                    on_start(name, cmd, log)
                # own process group: a terminal Ctrl-C reaches only this runner, which stops each
                # child together with its env workers below
                core = free_core({c for *_, c in running}) if pin else None
                proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=pinned_to(core))
                running.append((name, proc, logf, core))
            time.sleep(poll_s)
            for item in list(running):
                name, proc, logf, _ = item
                if proc.poll() is not None:
                    running.remove(item)
                    logf.close()
                    codes[name] = proc.returncode
                    if on_finish:
                        on_finish(name, proc.returncode)
    except BaseException:
        _stop_children(running, grace_s)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return codes


def _stop_children(running, grace_s: float) -> None:
    import signal

    def signal_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    for _, proc, _, _ in running:
        signal_group(proc, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for _, proc, logf, _ in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
        logf.close()


def train_processes(run: RunSpec, out: Path, resume: bool = False, max_procs: int | None = None) -> dict:
    """One single-threaded process per seed (at most one per core); results gathered afterwards."""
    out = Path(out)
    jobs = [(seed, train_command(dataclasses.replace(run, seeds=[seed]), out / f"seed_{seed}", resume),
             out / f"seed_{seed}.log") for seed in run.seeds]
    codes = run_commands(
        jobs, max_procs or os.cpu_count() or 1, env=single_thread_env(), pin=True,
        on_start=lambda seed, cmd, log: print(f"[seed {seed}] {' '.join(cmd[2:])}  (log: {log})"),
        on_finish=lambda seed, code: print(f"[seed {seed}] finished with exit code {code}"))
    failed = [seed for seed, code in codes.items() if code != 0]
    if failed:
        from steerflow.errors import RunFailed

        raise RunFailed(f"seeds {failed} failed (exit codes {[codes[s] for s in failed]}); see "
                        + ", ".join(str(out / f"seed_{s}.log") for s in failed))
    return gather_final(run, out)


def gather_final(run: RunSpec, out: Path) -> dict:
    from steerflow.runinfo import atomic_write_json

    finals = [json.loads((out / f"seed_{s}" / "final.json").read_text()) for s in run.seeds]
    if finals[0].get("metric") == "val_action_mse":  # an imported dataset scored offline
        per_seed = [f["val_action_mse"][0] for f in finals]
        final = {**finals[0], "seeds": list(run.seeds), "val_action_mse": per_seed, "mean": float(np.mean(per_seed))}
    else:
        per_seed = [f["final_success"][0] for f in finals]
        final = {**finals[0], "seeds": list(run.seeds), "final_success": per_seed, "mean": float(np.mean(per_seed))}
    atomic_write_json(out / "final.json", final)
    return final


def _fmt(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def evaluate_run(run_dir: Path, episodes: int = 50, workers: int = 2) -> list[dict]:
    """Evaluate the last checkpoint of a run directory (or of each `seed_k/` child run)."""
    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.data import normalization, source
    from steerflow.runinfo import atomic_write_json

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        children = sorted(run_dir.glob("seed_*/config.json"))
        if not children:
            raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json in it or in seed_*/")
        return [r for c in children for r in evaluate_run(c.parent, episodes, workers)]
    run = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
    agent, config, tc = resolve(run)
    task = source.eval_task(run)
    if task is None:
        raise ValueError(f"{run_dir} trained on dataset {run.dataset} without an env (--eval-task); its held-out "
                         f"action MSE is in {run_dir}/evals/")
    norm = normalization.load(run_dir) or normalization.Normalization.identity(task.obs_dim, task.action_dim)
    if (norm.obs_dim, norm.action_dim) != (task.obs_dim, task.action_dim):
        raise ValueError(f"{run_dir}/{normalization.FILE_NAME} is for {norm.obs_dim}-D observations and "
                         f"{norm.action_dim}-D actions; {task.name} has {task.obs_dim} and {task.action_dim}")
    spec = EnvSpec(obs_dim=task.obs_dim, action_dim=task.action_dim, horizon=tc.horizon)
    seed_keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in run.seeds])
    states = jax.vmap(lambda k: agent.init(k, spec, config))(seed_keys)
    if not (run_dir / "checkpoints" / "latest.msgpack").exists():
        raise FileNotFoundError(f"{run_dir}/checkpoints/latest.msgpack missing: the run has no checkpoint yet")
    states, _, step = load_checkpoint(run_dir, states, seed_keys)
    success = evaluate_states(agent, states, spec, task, episodes, workers, seed=10_000_019,
                              policy=source.normalized_policy(make_policy(agent), norm),
                              max_envs=tc.eval_envs, show_progress=True, desc=f"eval {run_dir.name} step {step}")
    per_seed = success.mean(1).tolist()
    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": run.seeds,
              "episodes": episodes, "success": per_seed, "mean": float(np.mean(per_seed)), "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "evals" / f"manual_step_{step:08d}_ep{episodes}.json", record)
    return [record]
