"""Local regeneration of OGBench manipulation "play" datasets (docs/algorithms.md#ogbench-data).

The benchmark's datasets cannot be downloaded here, so they are regenerated with the scripted
key-frame ``PlanOracle``s shipped inside the ``ogbench`` package, following the procedure of
OGBench's own generator (its ``generate_manipspace.py``):

1. ``gymnasium.make('<domain>-v0', terminate_at_goal=False, mode='data_collection',
   max_episode_steps=1001)``; every reset randomises the scene and draws one sub-target.
2. One PlanOracle per sub-task type (cube / button / drawer / window), ``noise=0.1``,
   ``noise_smoothing=0.5``; puzzles use ``ButtonPlanOracle(gripper_always_closed=True)``.
3. Per episode a stacking probability (0 single, U(0, 0.25) double, 0.5 otherwise).
4. Each step: action from the oracle, env step; when the oracle's plan is exhausted a new
   sub-target is drawn with ``env.unwrapped.set_new_target`` (sub-tasks chain without reset).
5. Recorded per step (all at the pre-action state): observation, action, terminal (True on the
   last step of the episode), ``prev_qpos``, ``prev_qvel`` and, for scene/puzzle,
   ``prev_button_states``.
6. Scene health check: an episode whose cube left the table (other than into the drawer) is
   discarded and regenerated.

Determinism: episodes are produced in fixed shards of ``SHARD_EPISODES`` episodes; shard ``i``
seeds the global ``np.random`` (used by the oracles) and the env's first ``reset(seed=...)`` from
``SeedSequence([seed, i])``. The result is therefore bitwise identical for any worker count (for a
fixed mujoco version; trajectories are chaotic and differ across mujoco versions).

Files use the official key layout so that ``ogbench.make_env_and_datasets(name,
dataset_path=...)`` relabels them unchanged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from steerflow.errors import naming

from .cache import cache_writer, check_dir, data_root, fingerprint, is_valid_dir, package_version, versions

DOMAINS = ("cube-single", "cube-double", "scene", "puzzle-3x3", "puzzle-4x4")


@dataclass(frozen=True)
class DomainInfo:
    obs_dim: int
    episode_length: int  # evaluation episode length (TimeLimit of the single-task env)
    qpos_dim: int
    qvel_dim: int
    num_buttons: int  # 0 when the env has no button_states
    action_dim: int = 5


DOMAIN_INFO: dict[str, DomainInfo] = {
    "cube-single": DomainInfo(obs_dim=28, episode_length=200, qpos_dim=21, qvel_dim=20, num_buttons=0),
    "cube-double": DomainInfo(obs_dim=37, episode_length=500, qpos_dim=28, qvel_dim=26, num_buttons=0),
    "scene": DomainInfo(obs_dim=40, episode_length=750, qpos_dim=25, qvel_dim=24, num_buttons=2),
    "puzzle-3x3": DomainInfo(obs_dim=55, episode_length=500, qpos_dim=23, qvel_dim=23, num_buttons=9),
    "puzzle-4x4": DomainInfo(obs_dim=83, episode_length=500, qpos_dim=30, qvel_dim=30, num_buttons=16),
}

ACTION_DIM = 5
DEFAULT_EPISODE_STEPS = 1001
SHARD_EPISODES = 10  # fixed shard size: determinism does not depend on the worker count
ORACLE_NOISE = 0.1
ORACLE_NOISE_SMOOTHING = 0.5
MAX_HEALTH_RETRIES = 100


def _check_domain(domain: str) -> DomainInfo:
    if domain not in DOMAIN_INFO:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return DOMAIN_INFO[domain]


def has_button_states(domain: str) -> bool:
    return _check_domain(domain).num_buttons > 0


def dataset_file_names(domain: str) -> tuple[str, str]:
    """(train, val) file names in the official naming: ``{domain}-play-v0.npz`` / ``-val.npz``."""
    _check_domain(domain)
    return f"{domain}-play-v0.npz", f"{domain}-play-v0-val.npz"


def required_keys(domain: str) -> tuple[str, ...]:
    keys = ("observations", "actions", "terminals", "qpos", "qvel")
    return keys + (("button_states",) if has_button_states(domain) else ())


# --------------------------------------------------------------------------------------------
# Cache keys (the cache itself: data/cache.py)
# --------------------------------------------------------------------------------------------


def cache_key(domain: str, episodes: int, seed: int, episode_steps: int = DEFAULT_EPISODE_STEPS) -> str:
    """E.g. ``cube-single-play-e1000-s0-ogbench1.2.2-mujoco4.0.0``.

    A non-default ``episode_steps`` (tests) adds ``-t<steps>`` after the episode count.
    """
    _check_domain(domain)
    steps = "" if episode_steps == DEFAULT_EPISODE_STEPS else f"-t{episode_steps}"
    return (
        f"{domain}-play-e{episodes}{steps}-s{seed}"
        f"-ogbench{package_version('ogbench')}-mujoco{package_version('mujoco')}"
    )


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

_ENV_CACHE: dict = {}


def _make_collection_env(domain: str, episode_steps: int):
    """Goal-conditioned data-collection env, cached per process (reset(seed=...) makes reuse
    deterministic: mujoco data is reset with mj_resetData and the env RNG is reseeded)."""
    key = (domain, episode_steps)
    if key not in _ENV_CACHE:
        from steerflow import gl

        gl.settle()
        import gymnasium
        import ogbench  # noqa: F401  (registers the env ids)

        _ENV_CACHE[key] = gymnasium.make(
            f"{domain}-v0",
            terminate_at_goal=False,
            mode="data_collection",
            max_episode_steps=episode_steps,
        )
    return _ENV_CACHE[key]


def _make_oracles(domain: str, env) -> dict:
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    kw = dict(env=env, noise=ORACLE_NOISE, noise_smoothing=ORACLE_NOISE_SMOOTHING)
    if domain.startswith("cube"):
        return {"cube": CubePlanOracle(**kw)}
    if domain == "scene":
        return {
            "cube": CubePlanOracle(**kw),
            "button": ButtonPlanOracle(**kw),
            "drawer": DrawerPlanOracle(**kw),
            "window": WindowPlanOracle(**kw),
        }
    if domain.startswith("puzzle"):
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **kw)}
    raise ValueError(domain)


def _p_stack(domain: str) -> float:
    if domain == "cube-single":
        return 0.0
    if domain == "cube-double":
        return float(np.random.uniform(0.0, 0.25))
    return 0.5  # no effect for the other domains


def _scene_episode_healthy(qpos: np.ndarray) -> bool:
    """Reject episodes where the cube left the table other than into the drawer."""
    cube = qpos[:, 14:17]
    y, z = cube[:, 1], cube[:, 2]
    if np.any(y >= 0.29):
        return False
    if np.any((y <= -0.3) & ~((z >= 0.06) & (z <= 0.08))):
        return False
    return True


def _run_episode(env, oracles: dict, domain: str, reset_seed: int | None) -> dict[str, np.ndarray]:
    p_stack = _p_stack(domain)
    ob, info = env.reset(seed=reset_seed)
    oracle = oracles[info["privileged/target_task"]]
    oracle.reset(ob, info)

    obs, acts, terms, qpos, qvel, buttons = [], [], [], [], [], []
    with_buttons = has_button_states(domain)
    done = False
    while not done:
        action = np.asarray(oracle.select_action(ob, info))
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        if oracle.done:
            o_ob, o_info = env.unwrapped.set_new_target(p_stack=p_stack)
            oracle = oracles[o_info["privileged/target_task"]]
            oracle.reset(o_ob, o_info)
        obs.append(ob)
        acts.append(action)
        terms.append(done)
        qpos.append(info["prev_qpos"])
        qvel.append(info["prev_qvel"])
        if with_buttons:
            buttons.append(info["prev_button_states"])
        ob = next_ob

    ep = {
        "observations": np.asarray(obs, dtype=np.float32),
        "actions": np.asarray(acts, dtype=np.float32),
        "terminals": np.asarray(terms, dtype=bool),
        "qpos": np.asarray(qpos, dtype=np.float32),
        "qvel": np.asarray(qvel, dtype=np.float32),
    }
    if with_buttons:
        ep["button_states"] = np.asarray(buttons, dtype=np.int64)
    return ep


def _concat(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([ep[k] for ep in episodes], axis=0) for k in episodes[0]}


def generate_episodes(
    domain: str,
    num_episodes: int,
    seed: int,
    episode_steps: int = DEFAULT_EPISODE_STEPS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Generate ``num_episodes`` play episodes in one sequential stream seeded by ``seed``.

    Seeds global ``np.random`` with ``seed`` and the env with ``reset(seed=seed)`` on the first
    episode. ``progress(1)`` is called after each accepted episode. Returns the official key
    layout: observations/actions/qpos/qvel float32, terminals bool, [button_states int64], each
    with ``num_episodes * episode_steps`` rows.
    """
    _check_domain(domain)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    env = _make_collection_env(domain, episode_steps)
    oracles = _make_oracles(domain, env)
    np.random.seed(seed % (2**32))
    reset_seed: int | None = seed
    episodes = []
    retries = 0
    while len(episodes) < num_episodes:
        ep = _run_episode(env, oracles, domain, reset_seed)
        reset_seed = None  # the env RNG continues from the first seeded reset
        if domain == "scene" and not _scene_episode_healthy(ep["qpos"]):
            retries += 1
            if retries > MAX_HEALTH_RETRIES:
                raise RuntimeError(f"scene health check failed {retries} times; giving up")
            continue
        episodes.append(ep)
        if progress is not None:
            progress(1)
    return _concat(episodes)


def _shard_seed(seed: int, shard_id: int) -> int:
    return int(np.random.SeedSequence([seed, shard_id]).generate_state(1, dtype=np.uint32)[0])


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops the pool and removes its temporary dir."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _gen_shard(args: tuple) -> tuple[int, dict[str, np.ndarray]]:
    domain, seed, shard_id, n_eps, episode_steps = args
    from steerflow import gl

    gl.settle()
    data = generate_episodes(domain, n_eps, _shard_seed(seed, shard_id), episode_steps=episode_steps)
    return shard_id, data


def _shards(total: int, size: int = SHARD_EPISODES) -> list[tuple[int, int]]:
    """[(shard_id, n_episodes)] covering ``total`` episodes in fixed-size shards."""
    return [(i, min(size, total - i * size)) for i in range((total + size - 1) // size)]


def generate_sharded(
    domain: str,
    total_episodes: int,
    seed: int,
    episode_steps: int = DEFAULT_EPISODE_STEPS,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    shard_episodes: int = SHARD_EPISODES,
) -> dict[str, np.ndarray]:
    """Generate ``total_episodes`` episodes as fixed shards; identical for any ``workers``.

    Shard ``i`` holds episodes ``[i*shard_episodes, (i+1)*shard_episodes)`` and is seeded from
    ``SeedSequence([seed, i])``; workers only change which process computes which shard.
    """
    shards = _shards(total_episodes, shard_episodes)
    jobs = [(domain, seed, sid, n, episode_steps) for sid, n in shards]
    results: dict[int, dict[str, np.ndarray]] = {}
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            sid = job[2]
            results[sid] = generate_episodes(
                domain, job[3], _shard_seed(seed, sid), episode_steps=episode_steps, progress=progress
            )
    else:
        import multiprocessing as mp

        from steerflow.errors import children_ignore_sigint

        ctx = mp.get_context("spawn")
        with children_ignore_sigint():
            pool = ctx.Pool(processes=min(workers, len(jobs)), initializer=_ignore_sigint)
        with pool:
            for sid, data in pool.imap_unordered(_gen_shard, jobs):
                results[sid] = data
                if progress is not None:
                    progress(shards[sid][1])
    return _concat([results[sid] for sid, _ in shards])


def _split_episodes(data: dict[str, np.ndarray], n_first: int, episode_steps: int):
    cut = n_first * episode_steps
    return {k: v[:cut] for k, v in data.items()}, {k: v[cut:] for k, v in data.items()}


def generate_dataset(
    domain: str,
    episodes: int = 1000,
    seed: int = 0,
    workers: int = 1,
    root: str | os.PathLike | None = None,
    show_progress: bool = True,
    episode_steps: int = DEFAULT_EPISODE_STEPS,
) -> Path:
    """Generate (or find cached) ``root/cache_key/`` with train/val npz files and ``meta.json``.

    Train file: the first ``episodes`` episodes; val file: ``max(1, episodes // 10)`` more.
    Written atomically (a scratch sibling dir of this process's, then renamed); an existing dir
    whose files match the sizes and sha256 of its meta.json is returned without regenerating, one
    that does not is regenerated (saying why). One process writes a key at a time: another one
    generating it is waited for. Leftovers of killed generations are removed first. An interrupt
    or a write error (disk full) removes the scratch dir; pool workers ignore SIGINT, so only this
    process handles Ctrl-C.
    """
    _check_domain(domain)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    from steerflow.runlock import remove_stale

    root = Path(root).expanduser() if root is not None else data_root()
    remove_stale(root)  # every call touching the cache, also one that finds its dataset there
    key = cache_key(domain, episodes, seed, episode_steps)
    final = root / key
    problem = check_dir(final) if final.exists() else None
    if final.exists() and problem is None:
        return final
    if problem is not None:
        print(f"[steerflow] cached dataset {final} is not usable ({problem}); regenerating it", flush=True)
    with cache_writer(root, key, f"dataset {final}", wait=True):
        if is_valid_dir(final):  # written by the process this one waited for
            return final
        return _generate_into(final, domain, episodes, seed, workers, show_progress, episode_steps)


def _generate_into(final: Path, domain: str, episodes: int, seed: int, workers: int, show_progress: bool,
                   episode_steps: int) -> Path:
    """Generate the train/val files and meta.json of ``final`` in a scratch directory, then rename it."""
    from steerflow import runlock

    val_episodes = max(1, episodes // 10)
    total = episodes + val_episodes
    bar = None
    progress = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"generating {domain}", unit="ep", dynamic_ncols=True)
        progress = bar.update

    t0 = time.time()
    with runlock.scratch(final.parent, final.name) as tmp:  # removed on failure (interrupt, disk full)
        try:
            data = generate_sharded(domain, total, seed, episode_steps, workers, progress)
        finally:
            if bar is not None:
                bar.close()
        train, val = _split_episodes(data, episodes, episode_steps)
        train_name, val_name = dataset_file_names(domain)
        files = {}
        for name, arrays in ((train_name, train), (val_name, val)):
            with naming(tmp / name):  # disk full, ...: name the file
                np.savez_compressed(tmp / name, **arrays)
            p = tmp / name
            files[name] = {"sha256": fingerprint(p), "size": p.stat().st_size}
        meta = {
            "domain": domain,
            "dataset_name": f"{domain}-play-v0",
            "episodes": episodes,
            "val_episodes": val_episodes,
            "episode_steps": episode_steps,
            "seed": seed,
            "shard_episodes": SHARD_EPISODES,
            "oracle_noise": ORACLE_NOISE,
            "oracle_noise_smoothing": ORACLE_NOISE_SMOOTHING,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "generation_seconds": round(time.time() - t0, 1),
            "files": files,
        }
        with naming(tmp / "meta.json"):
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        runlock.replace_dir(tmp, final)  # an invalid leftover at ``final`` is replaced
    return final
