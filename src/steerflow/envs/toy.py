"""A tiny Gymnasium env of the shape a robot's often has, for trying `--env` in seconds and for the
tests of the env adapter: a point on the plane driven to a goal.

Observations are a dict, ``observation`` (position, (2,)) and ``desired_goal`` ((2,)), like the
Gymnasium-Robotics goal envs; actions are velocities in ``[-2, 2]^2`` (deliberately not ``[-1, 1]``,
so that a run's action normalisation matters); ``pos <- clip(pos + 0.025·a, -1, 1)``. The reward is
``-‖pos − goal‖`` of the new position and ``info["is_success"]`` says it is within 0.1 of the goal.
``render()`` draws the point (white) and the goal (yellow) into a 64×64 RGB frame.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

SUCCESS_RADIUS = 0.1
SPEED = 0.025


class PointReach(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None):
        self.render_mode = render_mode
        box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Dict({"observation": box, "desired_goal": box})
        self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.pos = self.goal = np.zeros(2, np.float32)
        self.last_action = None  # what the env last received, in its own units (tests read it)

    def _obs(self) -> dict:
        return {"observation": self.pos.copy(), "desired_goal": self.goal.copy()}

    def reset(self, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        self.goal = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.last_action = np.asarray(action, np.float32).copy()
        self.pos = np.clip(self.pos + SPEED * self.last_action, -1.0, 1.0).astype(np.float32)
        distance = float(np.linalg.norm(self.pos - self.goal))
        return self._obs(), -distance, False, False, {"is_success": distance < SUCCESS_RADIUS}

    def render(self) -> np.ndarray:
        frame = np.zeros((64, 64, 3), np.uint8)
        for point, colour in ((self.goal, (255, 220, 0)), (self.pos, (255, 255, 255))):
            r, c = (np.clip((1 - point[1]) * 31.5, 0, 63).astype(int), np.clip((point[0] + 1) * 31.5, 0, 63).astype(int))
            frame[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = colour
        return frame


def point_reach(max_episode_steps: int = 40, render_mode: str | None = None) -> gym.Env:
    """The factory `--env steerflow.envs.toy:point_reach` calls."""
    return gym.wrappers.TimeLimit(PointReach(render_mode), max_episode_steps)


def scripted_demos(num_demos: int, seed: int = 0, noise: float = 0.3) -> list[dict]:
    """Successful demos of a noisy proportional controller, in the import layout
    (`steerflow.data.imports`): observations (T, 4) = [observation, desired_goal], actions (T, 2),
    next_observations (T, 4); each ends at its first successful step."""
    rng = np.random.default_rng(seed)
    demos, attempt = [], 0
    while len(demos) < num_demos:
        env = point_reach()
        obs, _ = env.reset(seed=seed * 100_003 + attempt)
        attempt += 1
        rows, actions, nexts = [], [], []
        for _ in range(40):
            flat = np.concatenate([obs["observation"], obs["desired_goal"]])
            action = np.clip(20 * (obs["desired_goal"] - obs["observation"]) + noise * rng.normal(size=2), -2, 2)
            obs, _, _, _, info = env.step(action.astype(np.float32))
            rows.append(flat), actions.append(action), nexts.append(np.concatenate([obs["observation"], obs["desired_goal"]]))
            if info["is_success"]:
                if len(actions) >= 2:  # an import needs two steps; a start on the goal is no demo
                    demos.append({"observations": np.array(rows, np.float32), "actions": np.array(actions, np.float32),
                                  "next_observations": np.array(nexts, np.float32)})
                break
    return demos
