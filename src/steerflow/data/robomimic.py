"""robomimic HDF5 demonstrations -> the episode layout of ``imports`` (time along axis 0).

File layout read (robomimic's own): ``data/demo_<i>/actions (T, A)``, optional ``rewards (T,)``,
``dones (T,)``, ``obs/<key>`` and ``next_obs/<key>`` with ``(T, d)`` low-dim or ``(T, H, W, C)``
uint8 image arrays; optional ``mask/<split>``: a list of demo names (bytes) such as ``train``.
``obs_keys`` picks observation keys in order: low-dim ones are concatenated into ``observations``,
uint8 image ones are kept as ``images``. Without ``obs_keys`` every low-dim key is used, sorted by
name. Demos are read in the order of their number (``demo_2`` before ``demo_10``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from steerflow.errors import DataError


def _demo_order(name: str):
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def _is_image(ds) -> bool:
    return ds.dtype == np.uint8 and ds.ndim == 4


def _obs_array(group, key: str, where: str):
    """The dataset `group[key]`, checked to be an observation array: low-dim (T,) or (T, d) numeric,
    or uint8 (T, H, W, C) camera frames (DataError naming the file, demo and key otherwise)."""
    import h5py

    node = group[key]
    if not isinstance(node, h5py.Dataset):
        inner = ", ".join(sorted(node)) or "nothing"
        raise DataError(f"{where}/{key} is a group (holding {inner}), not an array; name the arrays to use with "
                        f"--obs-keys, e.g. {key}/{next(iter(sorted(node)), 'ARRAY')}")
    if _is_image(node) or (node.ndim in (1, 2) and node.dtype.kind in "fiu"):
        return node
    hint = (" (camera frames must be uint8: convert them)" if node.ndim == 4 else
            " (a one-channel image needs its channel axis: (T, H, W, 1))" if node.ndim == 3 and node.dtype == np.uint8
            else "")
    raise DataError(f"{where}/{key} has dtype {node.dtype} and shape {node.shape}: expected a low-dim (T,) or (T, d) "
                    f"numeric array, or uint8 (T, H, W, C) camera frames{hint}")


def _group(node, where: str):
    """`node` if it is an HDF5 group (a demo, its obs), else a DataError naming it."""
    import h5py

    if not isinstance(node, h5py.Group):
        raise DataError(f"{where} is an array of shape {node.shape}, expected a group (robomimic's "
                        "data/demo_<i>/{actions, obs/<key>, next_obs/<key>})")
    return node


def _default_keys(obs, where: str) -> list[str]:
    """Every low-dim key of a demo's obs group, sorted (camera frames are left out)."""
    return sorted(k for k in obs if not _is_image(_obs_array(obs, k, where)))


def read(path: str | Path, obs_keys: list[str] | None = None, split: str | None = None):
    """(episodes, demo names, options) of a robomimic file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robomimic file {path} not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        if "data" not in f:
            raise DataError(f"{path}: no 'data' group (expected robomimic's data/demo_<i>/...)")
        _group(f["data"], f"{path}: data")
        names = sorted(f["data"].keys(), key=_demo_order)
        if split is not None:
            if "mask" not in f or split not in f["mask"]:
                have = sorted(f["mask"].keys()) if "mask" in f else []
                raise DataError(f"{path}: no filter key mask/{split} (has: {', '.join(have) or 'no mask group'})")
            wanted = [n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][split][()]]
            missing = [n for n in wanted if n not in f["data"]]
            if missing:
                raise DataError(f"{path}: mask/{split} names demos not in data/: {missing[:5]}")
            names = sorted(wanted, key=_demo_order)
        if not names:
            raise DataError(f"{path}: data/ holds no demos")
        first = _group(f["data"][names[0]], f"{path}: data/{names[0]}")
        if "obs" not in first:
            raise DataError(f"{path}: data/{names[0]} has no 'obs' group")
        if obs_keys is None:
            obs_keys = _default_keys(_group(first["obs"], f"{path}: data/{names[0]}/obs"),
                                     f"{path}: data/{names[0]}/obs")
            if not obs_keys:
                raise DataError(f"{path}: data/{names[0]}/obs has no low-dim key; name keys with --obs-keys")
        episodes = []
        for name in names:
            where = f"{path}: data/{name}"
            demo = _group(f["data"][name], where)
            for key in ("actions", "obs"):
                if key not in demo:
                    raise DataError(f"{where} has no {key!r}")
            ep, shapes = {"actions": demo["actions"][()]}, {}
            for group, target in (("obs", "observations"), ("next_obs", "next_observations")):
                if group not in demo:
                    continue
                low, images = [], {}
                _group(demo[group], f"{where}/{group}")
                for key in obs_keys:
                    if key not in demo[group]:
                        raise DataError(f"{where}/{group} has no key {key!r} (has: {', '.join(sorted(demo[group]))})")
                    ds = _obs_array(demo[group], key, f"{where}/{group}")
                    if shapes.setdefault(key, ds.shape)[1:] != ds.shape[1:]:
                        raise DataError(f"{where}/{group}/{key} has shape {ds.shape}, {where}/obs/{key} "
                                        f"{shapes[key]}: a next observation needs its observation's shape")
                    if _is_image(ds):
                        images[key] = ds[()]
                    else:
                        arr = ds[()]
                        low.append(arr.reshape(len(arr), -1) if arr.ndim >= 2 else arr[:, None])
                if not low:
                    raise DataError(f"{where}: --obs-keys names only image keys; at least one low-dim key is needed")
                if len({len(a) for a in low}) > 1:
                    raise DataError(f"{where}/{group} is ragged: keys {obs_keys} have lengths {[len(a) for a in low]}")
                if any(a.dtype.kind not in "fiu" for a in low):
                    bad = next(k for k, a in zip(obs_keys, low) if a.dtype.kind not in "fiu")
                    raise DataError(f"{where}/{group}/{bad} has non-numeric dtype")
                ep[target] = np.concatenate(low, axis=1)
                if images:
                    ep["images" if group == "obs" else "next_images"] = images
            for key in ("rewards", "dones"):
                if key in demo:
                    ep[key] = demo[key][()]
            episodes.append(ep)
    return episodes, [f"data/{n}" for n in names], {"obs_keys": list(obs_keys), "split": split}
