"""Teleoperation-like demonstrations made by scripted operators (`steerflow data demos`).

    teleop           the artifacts (pauses, hesitation, micro-corrections, jitter, premature release)
    fetch_scripted   a scripted operator for Gymnasium-Robotics' FetchPickAndPlace
    cube_oracle      OGBench's cube-single oracle, through the same artifacts
    writers          robomimic HDF5, LeRobot v3 and Minari writers (and the oracle episodes they store)

`make_demos` dispatches on the source name; `write_demos` writes robomimic HDF5 (no rewards, no
dones: import with `--reward sparse-success` training), read back like a user's file by
`steerflow data import robomimic FILE --name NAME --obs-keys <import_keys(source)>`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .teleop import ARTIFACTS, Artifacts

FETCH = "fetch-pick-and-place"
SOURCES = (FETCH, "cube-single-task1", "cube-single-task2", "cube-single-task3", "cube-single-task4",
           "cube-single-task5")


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown demo source {source!r}; expected {FETCH} or cube-single-taskN (N = 1..5)")


def make_demos(source: str, num_demos: int, seed: int = 0, artifacts: Artifacts = Artifacts.none(),
               progress=None) -> tuple[list[dict], dict]:
    """(demos, stats) of `source`: see `fetch_scripted.fetch_demos` and `cube_oracle.cube_demos`."""
    check_source(source)
    if source == FETCH:
        from .fetch_scripted import fetch_demos

        return fetch_demos(num_demos, seed, artifacts, progress=progress)
    from .cube_oracle import cube_demos

    return cube_demos(source, num_demos, seed, artifacts, progress=progress)


def import_keys(source: str) -> list[str]:
    """The observation keys of `source`'s files, in the order that rebuilds its flat observation."""
    from .writers import ROBOMIMIC_KEYS

    from .fetch_scripted import OBS_SLICES

    return list(OBS_SLICES if source == FETCH else ROBOMIMIC_KEYS)


def write_demos(path: str | os.PathLike, source: str, demos: list[dict], artifacts: Artifacts, seed: int) -> Path:
    """robomimic HDF5 of `demos` at `path` (obs/next_obs per key, actions; no rewards or dones)."""
    from .writers import write_robomimic

    from .fetch_scripted import OBS_SLICES

    episodes = [{k: d[k] for k in ("observations", "actions", "next_observations")} for d in demos]
    made_by = {"source": source, "seed": seed, "artifacts": {n: getattr(artifacts, n) for n in ARTIFACTS}}
    if source == FETCH:
        from steerflow.envs.fetch import ENV_ID

        return write_robomimic(path, episodes, obs_keys=OBS_SLICES,
                               env_args={"env_name": ENV_ID, "type": "gymnasium_robotics", "demos": made_by})
    return write_robomimic(path, episodes, env_args={"env_name": "cube-single", "type": "ogbench", "task": source,
                                                     "demos": made_by})
