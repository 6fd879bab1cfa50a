"""The one checkpoint format of both phases: `checkpoints/latest.msgpack` holds every seed's agent
state, the sampler keys and the step, and in the online phase also `online`: each seed's replay
buffer, the acting keys and the interaction counters (`train.online.OnlinePhase.state_dict`),
so that the buffer is saved with the agent state in one atomic write."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "latest.msgpack"


def save_checkpoint(run_dir: Path, states, keys, step: int, online: dict | None = None) -> None:
    from flax import serialization

    from steerflow.runinfo import atomic_write_bytes

    payload = {"states": states, "keys": keys, "step": np.int64(step), **({"online": online} if online else {})}
    atomic_write_bytes(checkpoint_path(run_dir), serialization.to_bytes(payload))


def _read(run_dir: Path) -> dict:
    from flax import serialization

    path = checkpoint_path(run_dir)
    try:
        return serialization.msgpack_restore(path.read_bytes())
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}. It is damaged; start a new run directory "
                         "instead of --resume.") from err


def _restore(run_dir: Path, template, raw):
    from flax import serialization

    try:
        return serialization.from_state_dict(template, raw)
    except Exception as err:  # a checkpoint from another config or a damaged file
        raise ValueError(f"cannot restore checkpoint {checkpoint_path(run_dir)}: {err}. It does not match this "
                         "run's config (or is damaged); start a new run directory instead of --resume.") from err


def load_checkpoint(run_dir: Path, states, keys):
    """(states, keys, step) shaped as the templates `states`, `keys`; any online part is left out."""
    raw = _read(run_dir)
    restored = _restore(run_dir, {"states": states, "keys": keys, "step": np.int64(0)},
                        {k: raw.get(k) for k in ("states", "keys", "step")})
    return restored["states"], restored["keys"], int(restored["step"])


def load_online(run_dir: Path, template: dict) -> dict | None:
    """The online part of the checkpoint shaped as `template` (None for an offline checkpoint)."""
    raw = _read(run_dir)
    return None if "online" not in raw else _restore(run_dir, template, raw["online"])


def read_step(run_dir: Path) -> int:
    return int(_read(run_dir)["step"])
