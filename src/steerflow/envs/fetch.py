"""Gymnasium-Robotics' FetchPickAndPlace: a real environment no one here wrote, as a test bed.

`pick_and_place()` returns the raw Gymnasium env (``FetchPickAndPlace-v4``): 4-D actions in
[-1, 1] (end-effector displacement dx, dy, dz in units of 5 cm per step, then the fingers' command,
+1 open / -1 close), dict observations ``observation (25,)``, ``achieved_goal (3,)`` (the block's
position), ``desired_goal (3,)``, sparse rewards and ``info["is_success"]`` (block within 5 cm of
the goal). One step is 20 MuJoCo substeps of 2 ms (25 Hz). The generic adapter
``steerflow.envs.gym_env`` flattens the dict and reads success from ``info["is_success"]``.

Compatibility: gymnasium-robotics 1.4.2 checks joint types with
``joint_type in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)``, where ``joint_type``
is a numpy int32. Under mujoco 4 the enum members compare equal to ints with ``==`` but not
through a tuple's ``in`` (the enum's reflected comparison with a numpy integer is False), so every
Fetch env fails an assertion while it is built. `apply_mujoco_compat()` (run once on import of this
module, and a no-op where ``in`` works) gives ``gymnasium_robotics.utils.mujoco_utils`` a stand-in
for its ``mujoco`` name whose ``mjtJoint`` members are plain ints; everything else is mujoco's own.
"""

from __future__ import annotations

import types

import gymnasium as gym
import mujoco
import numpy as np

ENV_ID = "FetchPickAndPlace-v4"
OBS_KEYS = ("observation", "achieved_goal", "desired_goal")  # the dict's keys, in the order demos record them


def joint_membership_broken() -> bool:
    """Whether ``np.int32(hinge) in (mjJNT_HINGE, mjJNT_SLIDE)`` is False (mujoco 4's enums)."""
    hinge, slide = mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE
    return np.int32(int(hinge)) not in (hinge, slide)


class _MujocoWithIntJoints(types.ModuleType):
    """`mujoco`, except that ``mjtJoint`` is a namespace of plain ints (``mjJNT_HINGE == 3``)."""

    def __init__(self):
        super().__init__("mujoco")
        self.mjtJoint = types.SimpleNamespace(**{name: int(getattr(mujoco.mjtJoint, name))
                                                 for name in dir(mujoco.mjtJoint) if name.startswith("mjJNT_")})

    def __getattr__(self, name):  # only reached for names not set above
        return getattr(mujoco, name)


def apply_mujoco_compat() -> bool:
    """Install the stand-in in ``gymnasium_robotics.utils.mujoco_utils`` when needed; idempotent.
    Returns whether it is installed."""
    from gymnasium_robotics.utils import mujoco_utils

    if isinstance(mujoco_utils.mujoco, _MujocoWithIntJoints):
        return True
    if not joint_membership_broken():
        return False
    mujoco_utils.mujoco = _MujocoWithIntJoints()
    return True


def pick_and_place(max_episode_steps: int = 50, render_mode: str | None = None, **kwargs) -> gym.Env:
    """Gymnasium-Robotics' FetchPickAndPlace-v4, `max_episode_steps` steps per episode (truncated
    after), `kwargs` passed to its constructor (e.g. ``reward_type="dense"``, ``width``, ``height``)."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    return gym.make(ENV_ID, max_episode_steps=max_episode_steps, render_mode=render_mode, **kwargs)


apply_mujoco_compat()
