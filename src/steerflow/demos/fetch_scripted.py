"""Scripted pick-and-place demonstrations in FetchPickAndPlace, with teleoperation artifacts.

`FetchOperator` is a closed-loop scripted operator: from each observation dict it reads its phase
(move above the block, descend, close the gripper, lift, carry to the goal, hold) and a clean
command in [-1, 1]^4 (dx, dy, dz of the gripper in units of 5 cm, then +1 open / -1 close). Its
phase is a function of the state (with hysteresis), so after any disturbance (a pause, an overshoot,
a dropped block) it carries on from where things are: a block that is no longer held is grasped again.

`fetch_demos` runs it through `teleop.Teleop` and keeps each episode that succeeds. Per demo, time
along axis 0, T steps:

    observations, next_observations  (T, 31)  observation (25) | achieved_goal (3) | desired_goal (3)
                                              before / after each action
    actions                          (T, 4)
    phases, events                   (T,) str  the operator's phase, the artifact acting ("" if none)

A demo ends at the first step whose `info["is_success"]` is true: its last action is the one that
reached success, its last next observation the success state. Episodes that do not succeed within
`max_steps` are discarded and counted; episodes already solved at reset are skipped and counted.
"""

from __future__ import annotations

import numpy as np

from .teleop import Artifacts, Teleop, tries_allowed

OBS_SLICES = {"observation": slice(0, 25), "achieved_goal": slice(25, 28), "desired_goal": slice(28, 31)}
STEP = 0.05  # metres of gripper displacement per unit of motion command
HOVER = 0.05  # the approach target: this high above the block
ALIGNED = 0.01  # xy distance to the block at which the descent starts (0.02 once descending)
BLOCK_WIDTH = 0.05  # finger opening when closed on the block
LIFT = 0.03  # lift the block this far above the table before carrying it
SUCCESS_RADIUS = 0.05  # FetchPickAndPlace's distance threshold


class FetchOperator:
    """The clean scripted operator: `reset(ob)`, then `__call__(ob) -> (phase, command (4,))`."""

    def reset(self, ob: dict):
        self.table_z = float(ob["observation"][5])  # the block rests on the table at reset
        self.phase = None

    def _phase(self, grip, block, width, goal) -> str:
        rel = block - grip
        engaged = self.phase in ("descend", "grasp", "lift", "carry", "hold")
        near_xy = np.linalg.norm(rel[:2]) < (2 * ALIGNED if engaged else ALIGNED)
        at_block = near_xy and abs(rel[2]) < (2 * ALIGNED if engaged else ALIGNED)
        if at_block and width < BLOCK_WIDTH + 0.005 and self.phase in ("grasp", "lift", "carry", "hold"):
            if np.linalg.norm(goal - block) < ALIGNED:
                return "hold"
            return "lift" if block[2] < self.table_z + LIFT and self.phase != "carry" else "carry"
        if at_block:
            return "grasp"
        return "descend" if near_xy else "reach"

    def __call__(self, ob: dict) -> tuple[str, np.ndarray]:
        o, goal = ob["observation"], ob["desired_goal"]
        grip, block, width = o[0:3], o[3:6], o[9] + o[10]
        self.phase = phase = self._phase(grip, block, width, goal)
        if phase == "reach":
            target, gripper = block + [0.0, 0.0, HOVER], 1.0
        elif phase in ("descend", "grasp"):  # the grasp keeps centring on the block while closing
            target, gripper = block, (1.0 if phase == "descend" else -1.0)
        elif phase == "lift":
            target, gripper = np.array([*grip[:2], grip[2] + self.table_z + 2 * LIFT - block[2]]), -1.0
        else:  # carry, hold: the block to the goal
            target, gripper = grip + goal - block, -1.0
        motion = np.clip((target - grip) / STEP, -1.0, 1.0)
        return phase, np.append(motion, gripper).astype(np.float32)


def flatten(ob: dict) -> np.ndarray:
    """(31,) float32: the observation dict's arrays in `OBS_SLICES` order."""
    return np.concatenate([ob[k] for k in OBS_SLICES]).astype(np.float32)


def fetch_demos(num_demos: int, seed: int = 0, artifacts: Artifacts = Artifacts.none(), max_steps: int = 50,
                max_tries: int | None = None, progress=None) -> tuple[list[dict], dict]:
    """`num_demos` successful demos and the statistics of making them: attempts, discarded (failed
    attempts), trivial (episodes solved at reset, skipped), counts {artifact: events in kept demos}.
    `progress(1)` is called per kept demo. Deterministic in `seed`. More than `max_tries` attempts
    (default `tries_allowed(num_demos)`) raise RuntimeError."""
    from steerflow.envs.fetch import pick_and_place

    env = pick_and_place(max_episode_steps=max_steps)
    teleop, operator = Teleop(artifacts, seed, grip_open=1.0), FetchOperator()
    demos, stats = [], {"attempts": 0, "discarded": 0, "trivial": 0, "counts": dict.fromkeys(teleop.counts, 0)}
    max_tries = tries_allowed(num_demos) if max_tries is None else max_tries
    while len(demos) < num_demos:
        if stats["attempts"] >= max_tries:
            raise RuntimeError(f"FetchPickAndPlace: only {len(demos)} of {stats['attempts']} scripted episodes succeeded")
        ob, _ = env.reset(seed=seed * 100_003 + stats["attempts"] + stats["trivial"])
        if np.linalg.norm(ob["achieved_goal"] - ob["desired_goal"]) < SUCCESS_RADIUS:
            stats["trivial"] += 1
            continue
        stats["attempts"] += 1
        operator.reset(ob)
        teleop.reset()
        rec = {k: [] for k in ("observations", "actions", "next_observations", "phases", "events")}
        success = False
        while not success:
            phase, command = operator(ob)
            action, _, event = teleop.step(phase, command)
            next_ob, _, terminated, truncated, info = env.step(action)
            for key, value in zip(rec, (flatten(ob), action, flatten(next_ob), phase, event)):
                rec[key].append(value)
            ob, success = next_ob, bool(info["is_success"])
            if terminated or truncated:
                break
        if not success:
            stats["discarded"] += 1
            continue
        demos.append({k: np.asarray(v) for k, v in rec.items()})
        for name, n in teleop.counts.items():
            stats["counts"][name] += n
        if progress is not None:
            progress(1)
    env.close()
    return demos, stats
