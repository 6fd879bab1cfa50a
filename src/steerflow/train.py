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
    "smoke": {"train": dict(steps=40, batch_size=16, updates_per_call=10, log_every=20, eval_every=40,
                            checkpoint_every=20, eval_episodes=2, eval_workers=0),
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
    config = apply_overrides(apply_overrides(agent.Config(), agent_overrides), run.overrides)
    train_config = apply_overrides(apply_overrides(TrainConfig(), preset["train"]), run.train_overrides)
    if train_config.steps % train_config.updates_per_call:
        raise ValueError(f"steps={train_config.steps} must be a multiple of updates_per_call="
                         f"{train_config.updates_per_call}")
    return agent, config, train_config


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
                    pool=None, max_envs: int = 10) -> np.ndarray:
    """Success (S, episodes) of every seed's policy; each seed's episodes run in waves of at most
    `max_envs` environments stepped together, one batched `act` call per chunk."""
    import jax

    from steerflow.evaluate import EnvPool, run_episodes

    num_seeds = jax.tree.leaves(states.params)[0].shape[0]
    policy = policy or make_policy(agent)
    key = jax.random.PRNGKey(seed)
    own_pool = pool is None
    pool = pool or EnvPool(task, min(episodes, max_envs), workers)
    results = []
    try:
        for i in range(num_seeds):
            state = jax.tree.map(lambda x: x[i], states)

            def act(obs):
                nonlocal key
                key, sub = jax.random.split(key)
                return np.asarray(policy(state, np.asarray(obs, np.float32), sub))

            results.append(run_episodes(pool, act, spec.horizon, episodes, seed=seed)["success"])
    finally:
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
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(["step", "seed", "success"])
        for s, v in zip(seeds, per_seed):
            writer.writerow([step, s, v])
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
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, seeds: list[int], metrics: dict, steps_per_s: float) -> None:
        names = sorted(metrics)
        if self.fields is None:
            self.fields = ["step", "seed", "steps_per_s", *names]
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            for i, seed in enumerate(seeds):
                writer.writerow({"step": step, "seed": seed, "steps_per_s": round(steps_per_s, 2),
                                 **{k: float(metrics[k][i]) for k in names}})


# --------------------------------------------------------------------------- the run

def train(run: RunSpec, out: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Train every seed of `run` in this process (vmapped) and return the final record."""
    import jax
    from tqdm import tqdm

    from steerflow.agents.common import EnvSpec
    from steerflow.config import to_dict
    from steerflow.data.chunks import build_chunk_dataset
    from steerflow.data.tasks import load_task_dataset, parse_task
    from steerflow.evaluate import EnvPool
    from steerflow.runinfo import atomic_write_json, device_description, git_commit, library_versions

    out = Path(out)
    config_path = out / "config.json"
    has_ckpt = (out / "checkpoints" / "latest.msgpack").exists()
    if resume and config_path.exists():
        stored = json.loads(config_path.read_text())["run"]
        if (stored["agent"], stored["task"], list(stored["seeds"])) != (run.agent, run.task, list(run.seeds)):
            raise ValueError(f"--resume: {config_path} was written for agent={stored['agent']} "
                             f"task={stored['task']} seeds={stored['seeds']}, not agent={run.agent} "
                             f"task={run.task} seeds={run.seeds}")
        run = RunSpec(**stored)  # resume with exactly the stored settings
    elif has_ckpt and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    task = parse_task(run.task)
    agent, config, tc = resolve(run)

    train_data, _, data_info = load_task_dataset(task, episodes=tc.dataset_episodes, seed=tc.dataset_seed,
                                                 episode_steps=tc.dataset_episode_steps,
                                                 workers=os.cpu_count() or 1)
    critic_cfg = getattr(config, "critic", None)
    discount = critic_cfg.discount if critic_cfg else 0.99
    ds = build_chunk_dataset(train_data, tc.horizon, discount)
    spec = EnvSpec(obs_dim=int(train_data["observations"].shape[1]),
                   action_dim=int(train_data["actions"].shape[1]), horizon=tc.horizon)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_path, {"run": dataclasses.asdict(run), "agent_config": to_dict(config),
                                    "train_config": to_dict(tc)})
    atomic_write_json(out / "run_info.json", {
        "commit": git_commit(), "versions": library_versions(), "device": device_description(),
        "dataset": data_info, "command": " ".join(sys.argv)})

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
    log = MetricsLog(out / "metrics.csv", step)

    train_call = make_train_call(agent, tc.batch_size, tc.updates_per_call)
    policy = make_policy(agent)
    pool = EnvPool(task, min(tc.eval_episodes, tc.eval_envs), tc.eval_workers)
    record = None
    run_start = time.perf_counter()
    try:
        bar = tqdm(total=tc.steps, initial=step, desc=f"{run.agent} {run.task} seeds={seeds}",
                   disable=quiet, dynamic_ncols=True, smoothing=0.05)
        window_t, window_steps = time.perf_counter(), 0
        while step < tc.steps:
            states, keys, metrics = train_call(states, keys, ds)
            step += tc.updates_per_call
            window_steps += tc.updates_per_call
            bar.update(tc.updates_per_call)
            if step % tc.log_every == 0 or step == tc.steps:
                metrics = jax.device_get(metrics)
                sps = window_steps / (time.perf_counter() - window_t)
                log.write(step, seeds, metrics, sps)
                bar.set_postfix({"steps/s": f"{sps:.0f}", **{k: f"{np.mean(v):.3g}" for k, v in metrics.items()
                                                             if k in ("critic_loss", "mf_loss", "fm_loss", "actor_q")}})
                window_t, window_steps = time.perf_counter(), 0
            if step % tc.eval_every == 0 or step == tc.steps:
                eval_start = time.perf_counter()
                success = evaluate_states(agent, states, spec, task, tc.eval_episodes, tc.eval_workers,
                                          seed=step, policy=policy, pool=pool)
                record = _record_eval(out, step, seeds, success, run, eval_s=time.perf_counter() - eval_start)
                bar.write(f"step {step}: success {record['mean']:.3f} per seed {np.round(record['success'], 3).tolist()}")
                window_t = time.perf_counter()  # evaluation time does not count as training speed
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save_checkpoint(out, states, keys, step)
        bar.close()
    finally:
        pool.close()
    if record is None:  # resumed a run that had already finished
        record = json.loads((out / "evals" / f"step_{tc.steps:08d}.json").read_text())
    final = {"agent": run.agent, "task": run.task, "preset": run.preset, "steps": tc.steps, "seeds": seeds,
             "final_success": record["success"], "mean": record["mean"], "episodes": record["episodes"],
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
    cmd = [sys.executable, "-m", "steerflow.cli", "train", "--agent", run.agent, "--task", run.task,
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
        raise RuntimeError(f"seeds {failed} failed; see {out}/seed_<k>.log")
    return gather_final(run, out)


def gather_final(run: RunSpec, out: Path) -> dict:
    from steerflow.runinfo import atomic_write_json

    finals = [json.loads((out / f"seed_{s}" / "final.json").read_text()) for s in run.seeds]
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
    from steerflow.data.tasks import parse_task
    from steerflow.runinfo import atomic_write_json

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        children = sorted(run_dir.glob("seed_*/config.json"))
        if not children:
            raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json in it or in seed_*/")
        return [r for c in children for r in evaluate_run(c.parent, episodes, workers)]
    run = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
    agent, config, tc = resolve(run)
    task = parse_task(run.task)
    spec = EnvSpec(obs_dim=task.obs_dim, action_dim=task.action_dim, horizon=tc.horizon)
    seed_keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in run.seeds])
    states = jax.vmap(lambda k: agent.init(k, spec, config))(seed_keys)
    if not (run_dir / "checkpoints" / "latest.msgpack").exists():
        raise FileNotFoundError(f"{run_dir}/checkpoints/latest.msgpack missing: the run has no checkpoint yet")
    states, _, step = load_checkpoint(run_dir, states, seed_keys)
    success = evaluate_states(agent, states, spec, task, episodes, workers, seed=10_000_019,
                              max_envs=tc.eval_envs)
    per_seed = success.mean(1).tolist()
    record = {"agent": run.agent, "task": run.task, "preset": run.preset, "step": step, "seeds": run.seeds,
              "episodes": episodes, "success": per_seed, "mean": float(np.mean(per_seed)), "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "evals" / f"manual_step_{step:08d}_ep{episodes}.json", record)
    return [record]
