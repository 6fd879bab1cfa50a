"""Visual OGBench datasets rendered from state datasets: `steerflow data render TASK --name NAME`.

OGBench's visual tasks (`visual-cube-single-task1` ...) observe one 64x64x3 uint8 camera frame.
Their datasets cannot be downloaded here, and a generated state dataset (`ogbench_gen`) records
the simulator state of every observation (`qpos`, `qvel`: the pre-action state of row t), so the
frame of row t is rendered by setting that state in the task's visual env (`set_state`, which runs
`mj_forward`) and drawing its `front_pixels` camera with the env's own render settings.

Frames match a fresh render of the same state bit for bit (tests). They are not bit-equal to the
observation the visual env returns after `step`: MuJoCo's `mj_step` leaves the body poses of the
last physics substep's start in `mjData`, so a step's frame lags its `qpos` by one substep (a few
edge pixels of the moving arm differ).

Output: an imported-kind cache (`imports.import_episodes`, format "ogbench-render") holding one
camera key `pixels` and no low-dim state (the visual tasks observe pixels only), the task's
relabelled rewards with dones = 1 where the task is solved (`--reward given`), actions as stored
(already in [-1, 1]: the stated bounds), so `steerflow train --dataset NAME` trains on it through
the CNN encoder. Rows per episode: T frames, T-1 transitions (the last action has no next frame).

Rendering runs on the CPU's software OpenGL here (EGL on Mesa's llvmpipe); see docs/results/robot-data.md for the
measured frames/s. Cube domains only: scene and puzzle frames also depend on button states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

RENDER_DOMAINS = ("cube-single", "cube-double")
CAMERA_KEY = "pixels"


def visual_env(domain: str, task_id: int):
    """The single-task visual OGBench env (64x64x3 frames) of `domain`'s task `task_id`."""
    from steerflow import gl

    gl.require("a visual (pixel-observation) env")
    import ogbench

    return ogbench.make_env_and_datasets(f"visual-{domain}-play-singletask-task{task_id}-v0", env_only=True)


class StateRenderer:
    """Frames of simulator states in a visual env: `render(qpos, qvel) -> (64, 64, 3) uint8`."""

    def __init__(self, domain: str, task_id: int = 1):
        if domain not in RENDER_DOMAINS:
            raise ValueError(f"cannot render domain {domain!r}: only {', '.join(RENDER_DOMAINS)} (scene and puzzle "
                             "frames also depend on button states, which set_state does not restore)")
        self.env = visual_env(domain, task_id)
        self.env.reset(seed=0)  # builds the model; the state is then set per frame
        self.raw = self.env.unwrapped

    def render(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        self.raw.set_state(np.asarray(qpos, np.float64), np.asarray(qvel, np.float64))
        return np.asarray(self.raw.render(), np.uint8)

    def render_many(self, qpos: np.ndarray, qvel: np.ndarray, progress: Callable[[int], None] | None = None):
        """(N, nq), (N, nv) states -> (N, 64, 64, 3) uint8 frames."""
        frames = None
        for i in range(len(qpos)):
            frame = self.render(qpos[i], qvel[i])
            if frames is None:
                frames = np.empty((len(qpos), *frame.shape), np.uint8)
            frames[i] = frame
            if progress is not None:
                progress(1)
        return frames

    def close(self) -> None:
        self.env.close()


def rendered_demos(demos: list[dict], renderer: StateRenderer, progress=None) -> list[dict]:
    """Pixel-only episodes (`imports` layout) of demos that carry the states of their T observations
    and of the last next one (qpos, qvel (T+1, .): `steerflow.demos.writers.oracle_task_demos(record_states=True)`):
    frames of all T+1 states, as `images` (T) and `next_images` (T), the state part empty (T, 0)."""
    out = []
    for demo in demos:
        frames = renderer.render_many(demo["qpos"], demo["qvel"], progress)
        empty = np.zeros((len(demo["actions"]), 0), np.float32)
        out.append({"observations": empty, "next_observations": empty, "actions": demo["actions"],
                    "images": {CAMERA_KEY: frames[:-1]}, "next_images": {CAMERA_KEY: frames[1:]}})
    return out


def state_episodes(task: str, episodes: int, dataset_episodes: int = 1000, seed: int = 0,
                   episode_steps: int | None = None) -> list[dict]:
    """The first `episodes` episodes of the generated play dataset of `task`'s domain (generated when
    missing), with the task's relabelled rewards: per episode qpos (T, nq), qvel (T, nv), actions
    (T, A), rewards (T,) and dones (T,) = 1 where the task is solved at that (pre-action) state."""
    from .ogbench_gen import DEFAULT_EPISODE_STEPS, dataset_file_names
    from .tasks import ACTION_CLIP, load_task_dataset, parse_task, sparse_rewards

    spec = parse_task(task)
    if spec.domain not in RENDER_DOMAINS:
        raise ValueError(f"{task}: cannot render domain {spec.domain!r}; renderable: {', '.join(RENDER_DOMAINS)}")
    if episodes > dataset_episodes:
        raise ValueError(f"--episodes {episodes}: the source dataset has {dataset_episodes} training episodes "
                         "(raise --dataset-episodes)")
    steps = episode_steps or DEFAULT_EPISODE_STEPS
    _, _, info = load_task_dataset(spec, episodes=dataset_episodes, seed=seed, episode_steps=steps)  # validated
    import ogbench

    path = Path(info["dataset_dir"]) / dataset_file_names(spec.domain)[0]
    env, data, _ = ogbench.make_env_and_datasets(spec.dataset_name, dataset_path=str(path), compact_dataset=True,
                                                 add_info=True)  # the env relabels the rewards for the task
    env.close()
    ends = np.flatnonzero(data["valids"] == 0)  # compact layout: every state kept, the last of each episode invalid
    out, start = [], 0
    for end in ends[:episodes]:
        rows = slice(start, end + 1)
        rewards = np.asarray(data["rewards"][rows], np.float32)
        out.append({"qpos": data["qpos"][rows], "qvel": data["qvel"][rows],
                    "actions": np.clip(data["actions"][rows], -ACTION_CLIP, ACTION_CLIP).astype(np.float32),
                    "rewards": sparse_rewards(rewards) if spec.sparse else rewards,
                    "dones": (1.0 - np.asarray(data["masks"][rows], np.float32))})
        start = end + 1
    return out


def render_task_dataset(task: str, name: str, episodes: int, dataset_episodes: int = 1000, seed: int = 0,
                        episode_steps: int | None = None, root=None, replace: bool = False,
                        show_progress: bool = True) -> tuple[Path, dict]:
    """Render `episodes` episodes of `task`'s state dataset and cache them as dataset `name`;
    returns (cache directory, {"frames", "render_s", "frames_per_s"})."""
    import time

    from tqdm import tqdm

    from . import cache, imports
    from .tasks import parse_task

    imports.check_name(name)
    spec = parse_task(task)
    root_dir = Path(root).expanduser() if root is not None else None
    if not replace and ((root_dir or cache.data_root()) / name).exists():
        raise FileExistsError(f"dataset {name} already exists; pass --replace to render over it or choose another --name")
    source = state_episodes(task, episodes, dataset_episodes, seed, episode_steps)
    renderer = StateRenderer(spec.domain, spec.task_id)
    total = sum(len(ep["qpos"]) for ep in source)
    start = time.perf_counter()
    with tqdm(total=total, desc=f"rendering {task} frames", unit="frame", disable=not show_progress) as bar:
        demos = [{"observations": np.zeros((len(ep["actions"]), 0), np.float32), "actions": ep["actions"],
                  "rewards": ep["rewards"], "dones": ep["dones"],
                  "images": {CAMERA_KEY: renderer.render_many(ep["qpos"], ep["qvel"], bar.update)}} for ep in source]
    render_s = time.perf_counter() - start
    renderer.close()
    options = {"task": spec.name, "episodes": episodes, "dataset_episodes": dataset_episodes, "seed": seed,
               "episode_steps": episode_steps, "camera": "front_pixels", "render_s": round(render_s, 1)}
    path = imports.import_episodes(demos, name, "ogbench-render", f"{spec.name} state dataset", options, root=root,
                                   replace=replace, action_bounds=(-1.0, 1.0))
    return path, {"frames": total, "render_s": render_s, "frames_per_s": total / render_s if render_s else float("nan")}
