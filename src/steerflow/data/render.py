"""Camera frames of recorded states: a generated dataset's ``qpos/qvel`` rendered by OGBench's
visual env (``visual-DOMAIN-v0``: the ``front_pixels`` camera, 64x64x3 uint8 by default), which is
how OGBench's visual datasets relate to its state ones. One frame per row, same time index as
the state: ``render_frames(domain, qpos (N, nq), qvel (N, nv)) -> (N, H, W, 3) uint8``.
"""

from __future__ import annotations

import os

import numpy as np


def render_frames(domain: str, qpos: np.ndarray, qvel: np.ndarray, size: int = 64, progress=None) -> np.ndarray:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium
    import mujoco
    import ogbench  # noqa: F401  (registers the env ids)

    if len(qpos) != len(qvel):
        raise ValueError(f"qpos has {len(qpos)} rows, qvel {len(qvel)}")
    env = gymnasium.make(f"visual-{domain}-v0", width=size, height=size)
    raw = env.unwrapped
    env.reset(seed=0)
    if qpos.shape[1] != raw._model.nq or qvel.shape[1] != raw._model.nv:
        raise ValueError(f"{domain}: states of {qpos.shape[1]}/{qvel.shape[1]} dims, the env has "
                         f"{raw._model.nq}/{raw._model.nv} (qpos/qvel)")
    frames = np.empty((len(qpos), size, size, 3), np.uint8)
    for i in range(len(qpos)):
        raw._data.qpos[:], raw._data.qvel[:] = qpos[i], qvel[i]
        mujoco.mj_forward(raw._model, raw._data)
        frames[i] = raw.render()
        if progress is not None:
            progress(1)
    env.close()
    return frames
