"""Observation and action normalisation: computed once at import, stored beside the data and in
every run directory, applied the same way by training, evaluation and any loaded policy.

Agents always see normalised observations ``(s - mean) / std`` and act in ``[-1, 1]^A``; the
environment (or robot) receives ``low + (a + 1) / 2 · (high - low)``. Shapes: ``obs_mean``,
``obs_std`` (obs_dim,); ``action_low``, ``action_high`` (A,) for one action, never a chunk.
``Normalization.identity(obs_dim, A)`` is the OGBench case (actions already in [-1, 1], raw
observations). The functions take numpy or jax arrays with any leading batch shape, so the same
code is traced into an exported policy.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FILE_NAME = "normalization.json"
MIN_STD = 1e-6  # constant observation dimensions are left unscaled rather than divided by 0


@dataclass(frozen=True)
class Normalization:
    obs_mean: tuple[float, ...]
    obs_std: tuple[float, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def __post_init__(self):
        if len(self.obs_mean) != len(self.obs_std):
            raise ValueError(f"obs_mean has {len(self.obs_mean)} entries, obs_std {len(self.obs_std)}")
        if len(self.action_low) != len(self.action_high):
            raise ValueError(f"action_low has {len(self.action_low)} entries, action_high {len(self.action_high)}")
        if any(h <= l for l, h in zip(self.action_low, self.action_high)):
            raise ValueError("action_high must exceed action_low in every dimension")

    @property
    def obs_dim(self) -> int:
        return len(self.obs_mean)

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @classmethod
    def identity(cls, obs_dim: int, action_dim: int) -> "Normalization":
        return cls((0.0,) * obs_dim, (1.0,) * obs_dim, (-1.0,) * action_dim, (1.0,) * action_dim)

    @classmethod
    def fit(cls, observations: np.ndarray, actions: np.ndarray) -> "Normalization":
        """Statistics of a dataset: (N, obs_dim) observations, (N, A) actions."""
        obs = np.asarray(observations, np.float64)
        std = np.maximum(obs.std(0), MIN_STD)
        return cls(tuple(map(float, obs.mean(0))), tuple(map(float, std)), *cls.fit_action_bounds(actions))

    @staticmethod
    def fit_action_bounds(actions: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) per action dimension of (N, A) actions."""
        act = np.asarray(actions, np.float64)
        low, high = act.min(0), act.max(0)
        flat = high - low < MIN_STD  # a constant action dimension still needs a non-empty range
        low, high = np.where(flat, low - 1.0, low), np.where(flat, high + 1.0, high)
        return tuple(map(float, low)), tuple(map(float, high))

    def is_identity(self) -> bool:
        return self == Normalization.identity(self.obs_dim, self.action_dim)

    def normalize_obs(self, obs):
        return (obs - np.asarray(self.obs_mean, np.float32)) / np.asarray(self.obs_std, np.float32)

    def normalize_action(self, action):
        """(..., A) or (..., H·A) env-space actions -> [-1, 1]."""
        low, high = self._bounds(action.shape[-1])
        return 2.0 * (action - low) / (high - low) - 1.0

    def denormalize_action(self, action):
        """(..., A) or (..., H·A) agent actions in [-1, 1] -> env space."""
        low, high = self._bounds(action.shape[-1])
        return low + (action + 1.0) * 0.5 * (high - low)

    def _bounds(self, width: int):
        if width % self.action_dim:
            raise ValueError(f"action width {width} is not a multiple of action_dim {self.action_dim}")
        reps = width // self.action_dim  # a flattened chunk repeats the per-step bounds
        return (np.tile(np.asarray(self.action_low, np.float32), reps),
                np.tile(np.asarray(self.action_high, np.float32), reps))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, source: str = "normalization") -> "Normalization":
        keys = ("obs_mean", "obs_std", "action_low", "action_high")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
        values = {k: tuple(float(x) for x in data[k]) for k in keys}
        if not all(np.isfinite(v).all() for v in values.values()):
            raise ValueError(f"{source}: non-finite statistics")
        return cls(**values)


def save(directory: Path, norm: Normalization) -> Path:
    path = Path(directory) / FILE_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(norm.to_json(), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load(directory: Path) -> Normalization | None:
    """The statistics stored in a dataset cache or run directory, or None if it has none."""
    path = Path(directory) / FILE_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return Normalization.from_json(data, source=str(path))


def check_same(expected: Normalization, found: Normalization, what: str) -> None:
    """A checkpoint used on data with other statistics would act in the wrong units."""
    a, b = expected.to_json(), found.to_json()
    for key in a:
        if len(a[key]) != len(b[key]) or not np.allclose(a[key], b[key], rtol=1e-6, atol=1e-8):
            raise ValueError(f"{what}: {key} differs from the run's stored normalisation "
                             f"({FILE_NAME}); was it trained on another dataset?")
