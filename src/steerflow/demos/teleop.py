"""Teleoperation artifacts, applied to a scripted operator's commands one step at a time.

Human teleoperated demonstrations are successful but suboptimal: operators hesitate, make
micro-corrections, move jitterily and pause (the LPS paper's account of its real-robot data, which
also names premature release as a failure its BC policies learn). `Teleop` turns the clean commands
of any scripted operator into such an operator's. Each step the operator proposes

    phase     its current sub-task, one of PHASES (e.g. "reach", "grasp", "carry")
    command   the clean action (A,): motion components first, the gripper command last

and `Teleop` returns the action (A,) to execute now, the fraction `progress` in [0, 1] of the
clean command's step it carries out (0 on an inserted still or overshoot step, < 1 while slowed down;
an operator that follows a time-indexed plan holds its clock by 1 - progress, a closed-loop one
re-plans from the next observation anyway) and the name of the artifact acting on this step ("" if
none). The artifacts, each switched on by a nonzero field of `Artifacts`:

    pause        at a change of phase: 2-4 steps of zero motion, the gripper command held
    hesitation   per grasp: the descent at 30% speed, then 2-4 still steps with the gripper still
                 open before it closes
    correction   at the end of a move to a target (MOVES): one more step along the last move
                 (an overshoot of `OVERSHOOT` action units), which the operator then corrects
    jitter       Gaussian noise of this std (action units) on every motion command but still steps
    release      per demo: during transport the gripper opens for `RELEASE_STEPS` steps, motion
                 stopped; the operator then re-grasps (its own logic: the block is not held)

Every draw comes from the `Teleop`'s own generator, so demos are a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

PHASES = ("reach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat", "hold")
ARTIFACTS = ("pause", "hesitation", "correction", "jitter", "release")

PAUSE_STEPS = (2, 4)  # inclusive range of a pause's / a hesitation's still steps
SLOWDOWN = 0.3  # speed of a hesitant descent
OVERSHOOT = 0.5  # extra displacement of a micro-correction's overshoot step, in action units
RELEASE_STEPS = 2  # gripper-open steps of a premature release
RELEASE_AFTER = (2, 4)  # the release comes at this (inclusive range) step of transport
MOVES = ("reach", "descend", "carry", "lower")  # phases that move to a target, which can be overshot
MIN_MOVE = 0.05  # ... unless their last motion command was smaller than this


def tries_allowed(num_demos: int) -> int:
    """Attempts a demonstrator may make for `num_demos` demos before giving up (a success rate
    under ~10% means something is broken, not unlucky)."""
    return 10 * num_demos + 10


@dataclass(frozen=True)
class Artifacts:
    """How strongly each artifact acts; 0 switches it off."""

    pause: float = 0.0  # probability of a pause at each change of phase
    hesitation: float = 0.0  # probability of hesitating before each grasp
    correction: float = 0.0  # probability of an overshoot at the end of each move to a target
    jitter: float = 0.0  # std of the noise on motion commands, in action units
    release: float = 0.0  # probability per demo of a premature release during transport

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"artifact {f.name}={value}: expected a value in [0, 1]")

    @classmethod
    def none(cls) -> Artifacts:
        return cls()

    @classmethod
    def default(cls) -> Artifacts:
        return cls(pause=0.3, hesitation=0.5, correction=0.3, jitter=0.05, release=0.3)

    @classmethod
    def parse(cls, text: str) -> Artifacts:
        """``all``, ``none`` or comma-separated names (``pause,jitter``): those at their default strength."""
        text = text.strip()
        if text in ("all", "none"):
            return cls.default() if text == "all" else cls.none()
        names = [n.strip() for n in text.split(",")]
        unknown = [n for n in names if n not in ARTIFACTS]
        if not text or unknown or len(set(names)) != len(names):
            raise ValueError(f"--artifacts {text!r}: expected all, none or distinct comma-separated names "
                             f"from {', '.join(ARTIFACTS)}")
        default = cls.default()
        return replace(cls.none(), **{n: getattr(default, n) for n in names})

    def active(self) -> tuple[str, ...]:
        return tuple(n for n in ARTIFACTS if getattr(self, n) > 0)


class Teleop:
    """One teleoperator: `reset()` before each demo, then `step(phase, command)` each step.

    `grip_open` is the gripper command that opens the gripper in this env (Fetch +1, OGBench -1).
    `counts` holds this demo's artifact events (jitter: the steps it perturbed)."""

    def __init__(self, artifacts: Artifacts, seed: int | np.random.Generator = 0, grip_open: float = 1.0):
        self.artifacts, self.grip_open = artifacts, float(grip_open)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self):
        a, rng = self.artifacts, self.rng
        self.counts = dict.fromkeys(ARTIFACTS, 0)
        self._queue: list[tuple[str, np.ndarray | None, float | None]] = []  # (event, motion, gripper)
        self._prev_phase, self._last_move, self._last_grip = None, None, None
        self._hesitant = False  # slowing down in the current descent
        self._carry_steps = 0
        self._release_at = int(rng.integers(RELEASE_AFTER[0], RELEASE_AFTER[1] + 1)) if rng.random() < a.release else None

    def _still(self, event: str):
        """Queue 2-4 steps of zero motion with the gripper command held."""
        self._queue += [(event, None, None)] * int(self.rng.integers(PAUSE_STEPS[0], PAUSE_STEPS[1] + 1))
        self.counts[event] += 1

    def _on_phase_change(self, phase: str):
        """Queue the artifacts that come with entering `phase` (its first step is the first queued)."""
        a, rng = self.artifacts, self.rng
        if phase == "descend":
            self._hesitant = rng.random() < a.hesitation
        if phase == "grasp" and self._hesitant:
            self._still("hesitation")
        elif rng.random() < a.pause:
            self._still("pause")
        if phase != "descend":
            self._hesitant = False
        move = self._last_move
        if self._prev_phase in MOVES and np.abs(move).max() >= MIN_MOVE and rng.random() < a.correction:
            self._queue.append(("correction", move / np.abs(move).max() * OVERSHOOT, None))
            self.counts["correction"] += 1

    def step(self, phase: str, command) -> tuple[np.ndarray, float, str]:
        """(action (A,) in [-1, 1], progress in [0, 1], event name or "") for this step."""
        command = np.asarray(command, np.float32)
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        if self._prev_phase is not None and phase != self._prev_phase and not self._queue:
            self._on_phase_change(phase)
        if phase == "carry" and self._release_at is not None:
            self._carry_steps += 1
            if self._carry_steps == self._release_at:
                self._queue += [("release", None, self.grip_open)] * RELEASE_STEPS
                self._release_at = None
                self.counts["release"] += 1
        self._prev_phase = phase

        if self._queue:
            event, motion, grip = self._queue.pop(0)
            progress = 0.0
        else:
            event, motion, grip, progress = "", command[:-1], command[-1], 1.0
            self._last_move = motion.copy()
            if self._hesitant and phase == "descend":
                event, motion, progress = "hesitation", motion * SLOWDOWN, SLOWDOWN
        grip = self._last_grip if grip is None else grip  # held (queued steps follow at least one step)
        if motion is None:
            motion = np.zeros_like(command[:-1])
        elif self.artifacts.jitter > 0:
            motion = motion + self.rng.normal(0.0, self.artifacts.jitter, motion.shape)
            self.counts["jitter"] += 1
        self._last_grip = grip
        action = np.clip(np.append(motion, grip), -1.0, 1.0).astype(np.float32)
        return action, progress, event
