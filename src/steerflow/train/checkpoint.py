"""The one checkpoint format: `checkpoints/latest.msgpack` holds every seed's agent state, the
sampler keys and the step, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_checkpoint(run_dir: Path, states, keys, step: int) -> None:
    from flax import serialization

    from steerflow.runinfo import atomic_write_bytes

    payload = serialization.to_bytes({"states": states, "keys": keys, "step": np.int64(step)})
    atomic_write_bytes(run_dir / "checkpoints" / "latest.msgpack", payload)


def load_checkpoint(run_dir: Path, states, keys):
    from flax import serialization

    path = run_dir / "checkpoints" / "latest.msgpack"
    try:
        restored = serialization.from_bytes({"states": states, "keys": keys, "step": np.int64(0)},
                                            path.read_bytes())
    except Exception as err:  # a checkpoint from another config or a damaged file
        raise ValueError(f"cannot restore checkpoint {path}: {err}. It does not match this run's "
                         "config (or is damaged); start a new run directory instead of --resume.") from err
    return restored["states"], restored["keys"], int(restored["step"])
