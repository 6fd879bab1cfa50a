"""Provenance of a run: git commit, library versions, device, and atomic file writes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

LIBRARIES = ("steerflow", "jax", "jaxlib", "flax", "optax", "numpy", "ogbench", "mujoco", "gymnasium")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def git_commit() -> str:
    """HEAD of the source checkout, with '-dirty' when tracked files have uncommitted changes
    (`STEERFLOW_COMMIT` where the tree was copied without its `.git`, as to a GPU machine)."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):  # no git or no .git (a copied tree): what the copier noted
        return os.environ.get("STEERFLOW_COMMIT", "unknown")


def device_description() -> str:
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        return f"cpu: {model}, {os.cpu_count()} cores"
    return f"{dev.platform}: {getattr(dev, 'device_kind', dev)}"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers never see a partial file, and a
    failed write (disk full) leaves the previous file as it was. Mode 0666 minus the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() respects the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:  # name the file, not the temporary one
            raise type(err)(err.errno, err.strerror or str(err), str(path)) from err
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
