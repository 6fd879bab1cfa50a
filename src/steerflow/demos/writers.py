"""Demonstrations the project makes itself, written in the formats practitioners bring (robomimic
HDF5, LeRobot v3, Minari): `steerflow data demos` writes its scripted operators' demos with
`write_robomimic`, and every reader is tested on real files from a clean clone.

Source episodes: cube-single oracle episodes from ``ogbench_gen.generate_episodes`` (the
scripted PlanOracle with its noise), split at ``terminals``: per episode ``observations (T, 28)``,
``actions (T, 5)`` at the pre-action state, and, when asked, rewards = -1 on every step but the
last (0) with dones = 1 there. Each writer stores T observations and T actions except Minari,
whose episodes hold one more observation than actions: it gets the T observations and the first
T-1 actions. All three therefore describe the same T-1 transitions per episode.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

# cube-single's 28-D observation split into two robomimic-style keys, to exercise concatenation
ROBOMIMIC_KEYS = {"robot0_proprio": slice(0, 19), "object": slice(19, 28)}


def oracle_episodes(num_episodes: int, seed: int = 0, episode_steps: int = 51, rewards: bool = True) -> list[dict]:
    """`num_episodes` cube-single oracle episodes of `episode_steps` steps each."""
    from steerflow.data.ogbench_gen import generate_episodes

    data = generate_episodes("cube-single", num_episodes, seed, episode_steps=episode_steps)
    ends = np.flatnonzero(data["terminals"]) + 1
    episodes = []
    for start, end in zip(np.concatenate([[0], ends[:-1]]), ends):
        ep = {"observations": data["observations"][start:end], "actions": data["actions"][start:end],
              "qpos": data["qpos"][start:end], "qvel": data["qvel"][start:end]}
        if rewards:
            t = end - start
            ep["rewards"] = np.where(np.arange(t) == t - 1, 0.0, -1.0).astype(np.float32)
            ep["dones"] = (np.arange(t) == t - 1).astype(np.float32)
        episodes.append(ep)
    return episodes


def oracle_task_demos(task: str, num_demos: int, seed: int = 0, noise: float = 0.1, max_tries: int | None = None,
                      progress=None, record_states: bool = False, hook=None) -> list[dict]:
    """`num_demos` successful demos of a single-cube task (e.g. cube-single-task2): OGBench's
    CubePlanOracle with its noise (suboptimal, like teleoperation) steering toward the task's goal
    in the evaluation env, kept only when the env reports success before its time limit. Per demo:
    observations, actions, next_observations (T, .), the last next observation solving the task;
    with `record_states`, also qpos (T+1, nq) and qvel (T+1, nv): the simulator state of every
    observation and of the last next one (what `data.render` draws frames from).

    `hook` (e.g. `steerflow.demos.cube_oracle.TeleopHook`) may change the oracle's actions:
    `hook.reset(env, oracle)` before each attempt's plan is made, `hook(ob, info, action)` -> the
    action to take instead, `hook.record()` -> per-step arrays stored with each kept demo."""
    import os

    from steerflow.data.ogbench_gen import ORACLE_NOISE_SMOOTHING
    from steerflow.data.tasks import make_env, parse_task

    from steerflow import gl

    gl.settle()
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    spec = parse_task(task)
    if not spec.domain == "cube-single":
        raise ValueError(f"{task}: oracle demos are made for cube-single tasks only")
    env = make_env(spec)
    raw = env.unwrapped
    oracle = CubePlanOracle(env=raw, noise=noise, noise_smoothing=ORACLE_NOISE_SMOOTHING)

    def with_target(info):  # the task's goal as the data-collection target the oracle plans toward
        from ogbench.manipspace import lie

        mocap = raw._cube_target_mocap_ids[0]
        return {**info, "privileged/target_block": 0, "privileged/target_block_pos": raw._data.mocap_pos[mocap].copy(),
                "privileged/target_block_yaw": np.array([lie.SO3(wxyz=raw._data.mocap_quat[mocap]).compute_yaw_radians()])}

    np.random.seed(seed)  # the oracle's noise
    demos, tries = [], 0
    while len(demos) < num_demos:
        tries += 1
        if max_tries is not None and tries > max_tries:
            raise RuntimeError(f"{task}: only {len(demos)} of {tries - 1} oracle episodes succeeded")
        ob, info = env.reset(seed=seed * 100_003 + tries)
        info = with_target(info)
        if hook is not None:
            hook.reset(raw, oracle)
        oracle.reset(ob, info)
        obs, acts, nxt, success = [], [], [], False
        states = [(info["qpos"].copy(), info["qvel"].copy())]
        while True:
            action = np.clip(np.asarray(oracle.select_action(ob, info), np.float32), -1, 1)
            if hook is not None:
                action = hook(ob, info, action)
            next_ob, _, terminated, truncated, info = env.step(action)
            info = with_target(info)
            obs.append(ob), acts.append(action), nxt.append(next_ob)
            states.append((info["qpos"].copy(), info["qvel"].copy()))
            ob = next_ob
            if terminated or truncated:
                success = bool(info.get("success", False))
                break
        if success:
            demos.append({"observations": np.asarray(obs, np.float32), "actions": np.asarray(acts, np.float32),
                          "next_observations": np.asarray(nxt, np.float32)})
            if hook is not None:
                demos[-1] |= hook.record()
            if record_states:
                demos[-1] |= {"qpos": np.asarray([q for q, _ in states]), "qvel": np.asarray([v for _, v in states])}
            if progress is not None:
                progress(1)
    env.close()
    return demos


def write_robomimic(path: str | os.PathLike, episodes: list[dict], images: dict | None = None,
                    splits: dict[str, list[int]] | None = None, obs_keys: dict[str, slice] | None = None,
                    env_args: dict | None = None) -> Path:
    """robomimic layout; `images` {key: [per-episode (T, H, W, C) uint8]} adds camera keys.
    `obs_keys` {key: columns of the episodes' observations} (default: cube-single's ROBOMIMIC_KEYS);
    `env_args` goes to data.attrs["env_args"] as JSON (default: cube-single's)."""
    import h5py

    path, obs_keys = Path(path), ROBOMIMIC_KEYS if obs_keys is None else obs_keys
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i, ep in enumerate(episodes):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = len(ep["actions"])
            total += len(ep["actions"])
            demo.create_dataset("actions", data=ep["actions"])
            for key in ("rewards", "dones"):
                if key in ep:
                    demo.create_dataset(key, data=ep[key])
            obs = demo.create_group("obs")
            for key, cols in obs_keys.items():
                obs.create_dataset(key, data=ep["observations"][:, cols])
            if "next_observations" in ep:
                nxt = demo.create_group("next_obs")
                for key, cols in obs_keys.items():
                    nxt.create_dataset(key, data=ep["next_observations"][:, cols])
            for key, frames in (images or {}).items():
                obs.create_dataset(key, data=frames[i])
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(env_args or {"env_name": "cube-single", "type": "ogbench"})
        if splits:
            mask = f.create_group("mask")
            for name, ids in splits.items():
                mask.create_dataset(name, data=np.array([f"demo_{i}".encode() for i in ids]))
    return path


def write_lerobot(root: str | os.PathLike, episodes: list[dict], fps: int = 10) -> Path:
    """A LeRobot v3.0 directory: meta/info.json, meta/tasks.parquet, meta/episodes/ and one data file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
    obs_dim, act_dim = episodes[0]["observations"].shape[1], episodes[0]["actions"].shape[1]
    with_rewards = "rewards" in episodes[0]
    cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                             "episode_index", "index", "task_index")}
    if with_rewards:
        cols["next.reward"], cols["next.done"] = [], []
    index = 0
    lengths = []
    for e, ep in enumerate(episodes):
        t = len(ep["actions"])
        lengths.append(t)
        cols["observation.state"] += list(ep["observations"].astype(np.float32))
        cols["action"] += list(ep["actions"].astype(np.float32))
        cols["timestamp"] += list(np.arange(t, dtype=np.float32) / fps)
        cols["frame_index"] += list(range(t))
        cols["episode_index"] += [e] * t
        cols["index"] += list(range(index, index + t))
        cols["task_index"] += [0] * t
        if with_rewards:
            cols["next.reward"] += list(ep["rewards"].astype(np.float32))
            cols["next.done"] += list(ep["dones"].astype(bool))
        index += t
    arrays = {}
    for key, values in cols.items():
        if key in ("observation.state", "action"):
            width = obs_dim if key == "observation.state" else act_dim
            flat = pa.array(np.concatenate(values).astype(np.float32))
            arrays[key] = pa.FixedSizeListArray.from_arrays(flat, width)
        else:
            arrays[key] = pa.array(np.asarray(values))
    pq.write_table(pa.table(arrays), root / "data" / "chunk-000" / "file-000.parquet")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pq.write_table(pa.table({"episode_index": np.arange(len(episodes)), "tasks": [["lift the cube"]] * len(episodes),
                             "length": np.asarray(lengths), "data/chunk_index": np.zeros(len(episodes), np.int64),
                             "data/file_index": np.zeros(len(episodes), np.int64),
                             "dataset_from_index": starts, "dataset_to_index": starts + np.asarray(lengths)}),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["lift the cube"]}), root / "meta" / "tasks.parquet")
    features = {
        "observation.state": {"dtype": "float32", "shape": [obs_dim], "names": None},
        "action": {"dtype": "float32", "shape": [act_dim], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if with_rewards:
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
        features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    info = {"codebase_version": "v3.0", "robot_type": "ogbench-ur5e", "total_episodes": len(episodes),
            "total_frames": int(index), "total_tasks": 1, "chunks_size": 1000, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": None, "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return root


def write_minari(root: str | os.PathLike, episodes: list[dict], dataset_id: str = "steerflow/cube-single-oracle-v0") -> Path:
    """A Minari dataset under `root` (its MINARI_DATASETS_PATH); returns the dataset directory."""
    import gymnasium as gym

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        from minari import create_dataset_from_buffers
        from minari.data_collector import EpisodeBuffer

        obs_dim, act_dim = episodes[0]["observations"].shape[1], episodes[0]["actions"].shape[1]
        buffers = []
        for i, ep in enumerate(episodes):
            n = len(ep["actions"]) - 1
            rewards = ep["rewards"][:n] if "rewards" in ep else np.zeros(n, np.float32)
            dones = ep["dones"][:n] if "dones" in ep else np.zeros(n)
            terminations = dones.astype(bool)  # the same first T-1 steps as the other writers
            buffers.append(EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"][:n],
                                         rewards=rewards, terminations=terminations,
                                         truncations=~terminations & (np.arange(n) == n - 1)))
        with warnings.catch_warnings():  # minari asks for author, permalink, ... metadata
            warnings.simplefilter("ignore", UserWarning)
            create_dataset_from_buffers(
                dataset_id, buffers, algorithm_name="ogbench-plan-oracle",
                observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                action_space=gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32))
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return Path(root) / dataset_id
