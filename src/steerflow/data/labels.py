"""A task's reward labels of a cached play dataset, stored beside it so that loading builds no env.

OGBench relabels a play dataset for one task from that task's targets in its env
(`ogbench.relabel_utils.relabel_dataset`: ``rewards`` and ``masks``, one per transition), so every
load used to build the env: ~3 s on one core, the largest part of a small run's start-up.
`data.tasks.load_task_dataset` stores the labels of its first load in
``<dataset dir>/labels/task<N>.npz`` with the sha256 of the two files they label, and a later load
takes them from there. A file whose fingerprints differ, or that cannot be read, is ignored and
written again. The dataset directory's name holds the OGBench and MuJoCo versions
(`ogbench_gen.cache_key`), so labels never outlive the code that made them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from steerflow.runinfo import atomic_write_bytes

SPLITS = ("train", "val")
KEYS = ("rewards", "masks")


def labels_path(dataset_dir: Path, task_id: int) -> Path:
    return Path(dataset_dir) / "labels" / f"task{task_id}.npz"


def read_labels(path: Path, fingerprints: tuple[str, str]) -> tuple[dict, dict] | None:
    """The stored (train, val) labels, each ``{"rewards": (N,), "masks": (N,)}`` float32, or None
    when there are none for these two files (fingerprints ``(train sha256, val sha256)``)."""
    try:
        with np.load(path) as f:
            if tuple(str(f[f"{s}_sha256"]) for s in SPLITS) != tuple(fingerprints):
                return None
            return tuple({k: f[f"{s}_{k}"] for k in KEYS} for s in SPLITS)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def write_labels(path: Path, datasets: tuple[dict, dict], fingerprints: tuple[str, str]) -> None:
    """Store the labels of relabelled (train, val) datasets; a cache that cannot be written (read-only,
    disk full) is left as it is: the next load relabels again."""
    arrays = {f"{s}_{k}": np.asarray(d[k], np.float32) for s, d in zip(SPLITS, datasets) for k in KEYS}
    arrays |= {f"{s}_sha256": np.array(fp) for s, fp in zip(SPLITS, fingerprints)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass

