"""Minari datasets on local disk -> the episode layout of ``imports`` (time along axis 0).

Read with the ``minari`` package (``MinariDataset`` on the dataset's ``data/`` directory; nothing
is downloaded). A Minari episode of T steps holds T+1 observations (the last one after the last
action), T actions, rewards, terminations and truncations, so every action has its successor
state: observations = obs[:-1], next_observations = obs[1:], dones = terminations. Flat Box
observations only; a Dict observation space needs ``obs_keys`` (its sub-keys, concatenated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steerflow.errors import DataError


def _low_dim(arr, where: str, key: str) -> np.ndarray:
    """`arr` as (T+1, d): a low-dim (T+1,) or (T+1, d) numeric array (DataError otherwise)."""
    arr = np.asarray(arr)
    if arr.ndim not in (1, 2) or arr.dtype.kind not in "fiu":
        raise DataError(f"{where} observation key {key!r} has dtype {arr.dtype} and shape {arr.shape}: expected a "
                        "low-dim (T+1,) or (T+1, d) numeric array (image observations are not read from Minari)")
    return arr.reshape(len(arr), -1)


def read(path: str | Path, obs_keys: list[str] | None = None):
    """(episodes, episode names, options) of a local Minari dataset directory (or its data/)."""
    path = Path(path)
    data_dir = path / "data" if (path / "data").is_dir() else path
    if not (data_dir / "metadata.json").is_file():
        raise FileNotFoundError(f"{data_dir / 'metadata.json'} not found: {path} is not a Minari dataset directory")
    from minari import MinariDataset

    try:
        dataset = MinariDataset(data_dir)
    except Exception as err:  # noqa: BLE001 - minari raises assertions and ValueErrors alike
        raise DataError(f"{data_dir}: Minari cannot open it ({type(err).__name__}: {err})") from None
    episodes, names = [], []
    for ep in dataset.iterate_episodes():
        obs = ep.observations
        if isinstance(obs, dict):
            if not obs_keys:
                raise DataError(f"{data_dir}: observations are a dict ({', '.join(sorted(obs))}); choose keys "
                                "with --obs-keys")
            missing = [k for k in obs_keys if k not in obs]
            if missing:
                raise DataError(f"{data_dir}: episode {ep.id} observations lack {missing}")
            obs = np.concatenate([_low_dim(obs[k], f"{data_dir}: episode {ep.id}", k) for k in obs_keys], axis=1)
        obs = _low_dim(obs, f"{data_dir}: episode {ep.id}", "observations")
        if len(obs) != len(ep.actions) + 1:
            raise DataError(f"{data_dir}: episode {ep.id} has {len(obs)} observations for {len(ep.actions)} "
                            "actions (Minari stores one more observation than actions)")
        episodes.append({"observations": obs[:-1], "next_observations": obs[1:], "actions": np.asarray(ep.actions),
                         "rewards": np.asarray(ep.rewards), "dones": np.asarray(ep.terminations)})
        names.append(f"episode {ep.id}")
    return episodes, names, {"obs_keys": list(obs_keys or []), "dataset_id": dataset.id}
