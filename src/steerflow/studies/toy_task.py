"""The 2-D toy task (`studies.toy`): behaviour data, reward and the support rule, shared by the
study and its figures (which import only this module, so the dependency runs one way:
toy → toy_plots → toy_task).

One state (obs = 0, obs_dim 1), one step (H = 1, every transition terminal), 2-D actions in [-1, 1]².
Shapes: actions (..., 2), dataset actions (n, 2).
"""

from __future__ import annotations

import numpy as np

# Three equal-weight Gaussian blobs on the anti-diagonal: the top-right and bottom-left halves of
# the square stay empty, the centre blob holds the best in-support actions, and the straight
# paths between blobs (where a smooth generator interpolates) are worse than the centre blob.
MODES = ((-0.6, 0.6), (0.0, 0.0), (0.6, -0.6))
MODE_STD = 0.1
REWARD_CENTRE = (1.0, 1.0)
REWARD_WIDTH = 0.6
SPEC_DIMS = dict(obs_dim=1, action_dim=2, horizon=1)


def reward(actions: np.ndarray) -> np.ndarray:
    """r(a) for actions (..., 2)."""
    sq = np.sum((np.asarray(actions) - np.asarray(REWARD_CENTRE)) ** 2, -1)
    return np.exp(-sq / (2 * REWARD_WIDTH**2))


def make_transitions(seed: int, n: int) -> dict:
    """n single-step transitions from the behaviour mixture, each its own (terminal) trajectory."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(MODES)[rng.integers(0, len(MODES), n)]
    actions = np.clip(centres + MODE_STD * rng.standard_normal((n, 2)), -1.0, 1.0).astype(np.float32)
    obs = np.zeros((n, SPEC_DIMS["obs_dim"]), np.float32)
    return {"observations": obs, "actions": actions, "rewards": reward(actions).astype(np.float32),
            "masks": np.zeros(n, np.float32), "next_observations": obs, "terminals": np.ones(n, np.float32)}


def support_distance(actions: np.ndarray, data_actions: np.ndarray) -> np.ndarray:
    """Distance from each action (..., 2) to its nearest dataset action."""
    flat = actions.reshape(-1, 2)
    d = np.sqrt(((flat[:, None, :] - data_actions[None, :, :]) ** 2).sum(-1)).min(1)
    return d.reshape(actions.shape[:-1])
