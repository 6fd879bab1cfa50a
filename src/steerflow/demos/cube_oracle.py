"""Teleoperation artifacts on OGBench cube-single oracle demos.

`cube_demos` is `steerflow.demos.writers.oracle_task_demos` (OGBench's CubePlanOracle with
its noise, kept when the task is solved within the env's 200 steps) with a `TeleopHook`: each
action goes through a `teleop.Teleop`. The oracle follows a time-indexed plan (keyframes joined by
0.4 s segments, 20 Hz control), so the hook

- names the phase from the plan segment the clock is in (`SEGMENT_PHASE`),
- holds the plan's clock by (1 - progress) of a step whenever the teleoperator is still, overshoots
  or slows down (the plan waits for the operator instead of running ahead of it),
- after a premature release waits `REGRASP_WAIT` steps for the gripper to close again and, if the
  block is no longer held, re-plans from the current state (the oracle picks the block up where it
  fell and places it).

Per demo (time along axis 0, T steps): observations, next_observations (T, 28), actions (T, 5) in
OGBench's layout (dx, dy, dz, dyaw, gripper; +1 closes), phases and events (T,) str.
"""

from __future__ import annotations

import numpy as np

from .teleop import Artifacts, Teleop, tries_allowed

# the phase of the plan segment that ends at each keyframe of CubePlanOracle.compute_keyframes
SEGMENT_PHASE = {"pick": "reach", "pick_start": "descend", "pick_end": "grasp", "postpick": "lift",
                 "clearance": "carry", "place": "carry", "place_start": "lower", "place_end": "release",
                 "postplace": "retreat", "final": "retreat"}
REGRASP_WAIT = 4  # steps after a premature release before checking that the block is held again
HELD_RADIUS = 0.03  # the block is held if its centre is this close to the gripper's pinch point


class TeleopHook:
    """The `hook` of `oracle_task_demos` that makes its oracle a teleoperator (see the module)."""

    def __init__(self, artifacts: Artifacts, seed: int = 0):
        self.teleop = Teleop(artifacts, seed, grip_open=-1.0)
        self.attempts, self.kept = 0, 0
        self.counts = dict.fromkeys(self.teleop.counts, 0)
        self.oracle = self._keyframes = None

    def reset(self, env, oracle):
        """A new attempt, before the oracle plans it."""
        if self.oracle is not oracle:  # record each plan's keyframe times (the oracle keeps only the plan)
            plan_keyframes = oracle.compute_keyframes

            def recording(plan_input):
                times, poses, grasps = plan_keyframes(plan_input)
                self._keyframes = list(times.items())
                return times, poses, grasps

            oracle.compute_keyframes = recording
            self.oracle, self.dt = oracle, env._control_timestep
        self.attempts += 1
        self.teleop.reset()
        self._phases, self._events, self._check_in = [], [], None

    def _phase(self, t: float) -> str:
        for name, end in self._keyframes[1:]:
            if t < end:
                return SEGMENT_PHASE[name]
        return "hold"

    def __call__(self, ob, info, action):
        if self._check_in is not None:
            self._check_in -= 1
            if self._check_in == 0:
                self._check_in = None
                held = np.linalg.norm(info["privileged/block_0_pos"] - info["proprio/effector_pos"]) < HELD_RADIUS
                if not held:  # pick it up again from where it fell
                    self.oracle.reset(ob, info)
                    action = np.clip(np.asarray(self.oracle.select_action(ob, info), np.float32), -1, 1)
        phase = self._phase(info["time"][0] - self.oracle._t_init)
        action, progress, event = self.teleop.step(phase, action)
        self.oracle._t_init += (1.0 - progress) * self.dt  # hold the plan's clock
        if event == "release":  # counted from the release's last step
            self._check_in = REGRASP_WAIT
        self._phases.append(phase)
        self._events.append(event)
        return action

    def record(self) -> dict:
        """This attempt's per-step phases and events; called for kept demos only."""
        self.kept += 1
        for name, n in self.teleop.counts.items():
            self.counts[name] += n
        return {"phases": np.asarray(self._phases), "events": np.asarray(self._events)}


def cube_demos(task: str, num_demos: int, seed: int = 0, artifacts: Artifacts = Artifacts.none(),
               max_tries: int | None = None, progress=None) -> tuple[list[dict], dict]:
    """`num_demos` successful cube-single oracle demos of `task` with `artifacts`, and the statistics
    of making them (as `fetch_scripted.fetch_demos`'). Deterministic in `seed`."""
    from .writers import oracle_task_demos

    hook = TeleopHook(artifacts, seed)
    max_tries = tries_allowed(num_demos) if max_tries is None else max_tries
    demos = oracle_task_demos(task, num_demos, seed=seed, max_tries=max_tries, progress=progress, hook=hook)
    return demos, {"attempts": hook.attempts, "discarded": hook.attempts - len(demos), "trivial": 0,
                   "counts": hook.counts}
