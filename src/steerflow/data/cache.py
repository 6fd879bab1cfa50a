"""The dataset cache: ``$STEERFLOW_DATA`` (or ``~/.cache/steerflow/data``), one directory per
dataset with its ``.npz`` files and a ``meta.json`` recording each file's size and sha256.

Generation (`data.ogbench_gen`), import (`data.imports`) and rendering (`data.render`) write entries
through `cache_writer` (one writer per entry, `steerflow.runlock`) and check them with `check_dir`;
`list_datasets` is `steerflow data info`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path


def data_root() -> Path:
    """Dataset cache root: ``$STEERFLOW_DATA`` or ``~/.cache/steerflow/data``."""
    env = os.environ.get("STEERFLOW_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/steerflow/data").expanduser()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def versions() -> dict[str, str]:
    return {k: package_version(k) for k in ("ogbench", "mujoco", "gymnasium", "numpy")}


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_dir(path: Path, verify: bool = True) -> str | None:
    """None when ``path`` is a complete dataset directory, else what is wrong with it. ``verify``
    also compares every file's sha256 with the one meta.json records (about 0.2 s for the 56 MB
    of the 200-episode cube-single dataset)."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return f"{meta_path} is missing"
    try:
        meta = json.loads(meta_path.read_text())
        for name, entry in meta["files"].items():
            f = path / name
            if not f.is_file():
                return f"{f} is missing"
            if f.stat().st_size != entry["size"]:
                return f"{f} has {f.stat().st_size} bytes, meta.json records {entry['size']}"
            if not entry.get("sha256"):
                return f"meta.json records no sha256 for {f}"
            if verify and fingerprint(f) != entry["sha256"]:
                return f"{f} does not match the sha256 meta.json records (corrupt or modified)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{meta_path} is unreadable ({type(err).__name__}: {err})"
    return None


def is_valid_dir(path: Path, verify: bool = True) -> bool:
    return check_dir(path, verify) is None


@contextlib.contextmanager
def cache_writer(root: Path, name: str, what: str, wait: bool = False):
    """Own cache entry ``root/name`` while inside (``steerflow.runlock``): another live writer of
    it is waited for (``wait``) or refused, naming its pid and command; leftovers of killed
    writers in ``root`` are removed first (saying so)."""
    from steerflow import runlock

    root.mkdir(parents=True, exist_ok=True)
    with runlock.hold(runlock.sibling_lock(root / name), what, hint="choose another --name", wait=wait,
                      on_wait=lambda other: print(f"[steerflow] waiting for {other}, which is writing {root / name}",
                                                  flush=True)):
        runlock.remove_stale(root)
        yield


def read_meta(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Describe the cached datasets under ``root`` (for ``steerflow data info``)."""
    from steerflow.runlock import remove_stale

    root = Path(root).expanduser() if root is not None else data_root()
    out = []
    if not root.is_dir():
        return out
    remove_stale(root)  # leftovers of killed writers (said on stderr)
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        problem = check_dir(d)  # sizes and sha256
        entry: dict = {"name": d.name, "path": str(d), "valid": problem is None,
                       **({"problem": problem} if problem else {})}
        try:
            meta = read_meta(d)
        except (OSError, ValueError):
            meta = {}
        entry.update(
            kind=meta.get("kind", "generated"),  # or "imported" (data.imports: format, source)
            **{k: meta[k] for k in ("format", "source") if k in meta},
            domain=meta.get("domain"),
            episodes=meta.get("episodes"),
            val_episodes=meta.get("val_episodes"),
            episode_steps=meta.get("episode_steps"),
            seed=meta.get("seed"),
            created=meta.get("created"),
            versions=meta.get("versions"),
        )
        files = {}
        for f in sorted(d.glob("*.npz")):
            recorded = meta.get("files", {}).get(f.name, {})
            files[f.name] = {
                "size_mb": round(f.stat().st_size / 2**20, 2),
                "sha256": recorded.get("sha256"),
            }
        entry["files"] = files
        entry["size_mb"] = round(sum(v["size_mb"] for v in files.values()), 2)
        out.append(entry)
    return out
