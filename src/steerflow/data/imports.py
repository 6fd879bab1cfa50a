"""A practitioner's own demonstrations (docs/algorithms.md#robot-datasets): one episode layout every reader produces, its
validation, the cache it is imported into, and the reward modes a run chooses at training time.

Episode layout (what ``robomimic``, ``lerobot`` and ``minari_io`` return, one dict per demo, time
along axis 0, ``T`` recorded steps, ``s_t`` the state before ``a_t``):

    observations       (T, D) float32   low-dim keys concatenated in the order asked for
    actions            (T, A) float32
    next_observations  (T, D) float32   optional; without it the last action has no successor
                                         state and the episode gives T-1 transitions
    rewards            (T,)   float32   optional (teleoperated demos usually have none)
    dones              (T,)   float32   optional: 1 where the task was solved (a true terminal)
    images             {key: (T, H, W, C) uint8}   optional camera frames, kept uint8
    next_images        {key: (T, H, W, C) uint8}   optional frames after each action (robomimic's
                                         next_obs); only its last frame is kept (the others are
                                         `images` shifted by one)

Imported cache ``data_root()/NAME/``: ``train.npz`` and ``val.npz`` (the last ``max(1, n // 10)``
demos when there are at least two) in the flat transition layout of ``chunks.py`` (observations,
actions, next_observations, terminals = 1 on each demo's last transition, rewards and dones
when the file had them; with camera keys ``image.<key>`` holds each demo's frames once, in order,
and ``frame_index``/``next_frame_index`` (N,) int32 point at the frames of s_t and s_{t+1}, so the
sampler gathers uint8 frames by index instead of storing them twice; a demo with
``next_observations`` but no ``next_images`` loses its last transition, whose next frame is
unknown), ``normalization.json`` (observation statistics of the training
split; action bounds stated, or fitted over every demo) and ``meta.json`` with every file's size and sha256, written
into a temporary sibling directory of its own and renamed, so a failed import leaves nothing cached
(a full disk names the dataset); a second import of the same NAME while one runs is refused.

Reward modes (``--reward``): ``given`` uses the file's rewards, mask = 1 - done; ``sparse-success``
treats every demo as a success (the LPS real-robot setup): r = -1 on every transition but a demo's
last, which gets r = 0 and mask = 0. A dataset without rewards needs ``--reward sparse-success``.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from steerflow import runlock
from steerflow.errors import DataError, naming  # the readers raise DataError too (lerobot, robomimic, minari_io)

from . import normalization
from .normalization import Normalization
from .cache import cache_writer, check_dir, data_root, fingerprint

FORMATS = ("robomimic", "lerobot", "minari")
REWARD_MODES = ("given", "sparse-success")
DATASET_PREFIX = "dataset:"  # a run's task name when it trains on an imported dataset without an env
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
BOUNDS_TOL = 1e-4  # normalised actions may exceed [-1, 1] by float rounding only


# --------------------------------------------------------------------------- validation

def _check_array(arr, source: str, demo: str, key: str, ndim: int, kinds: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in kinds:
        raise DataError(f"{source}: {demo} key {key!r} has dtype {arr.dtype}, expected "
                        f"{'a floating' if kinds == 'f' else 'a numeric'} array")
    if arr.ndim != ndim:
        raise DataError(f"{source}: {demo} key {key!r} has shape {arr.shape}, expected {ndim} dimension(s)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))
        raise DataError(f"{source}: {demo} key {key!r} holds {int((~np.isfinite(arr)).sum())} non-finite "
                        f"value(s) (NaN or inf), the first at step {int(rows[0])}")
    return arr


def validate_episodes(episodes: list[dict], source: str, names: list[str] | None = None) -> list[dict]:
    """Checked float32 copies of `episodes` (DataError naming the demo and key otherwise)."""
    if not episodes:
        raise DataError(f"{source}: no demonstrations to import")
    names = names or [f"demo {i}" for i in range(len(episodes))]
    out, dims = [], None
    for ep, demo in zip(episodes, names):
        for key in ("observations", "actions"):
            if key not in ep:
                raise DataError(f"{source}: {demo} has no {key!r}")
        obs = _check_array(ep["observations"], source, demo, "observations", 2, "fiu")
        act = _check_array(ep["actions"], source, demo, "actions", 2, "f")
        length = len(act)
        clean = {"observations": obs.astype(np.float32), "actions": act.astype(np.float32)}
        for key, ndim in (("next_observations", 2), ("rewards", 1), ("dones", 1)):
            if ep.get(key) is not None:
                clean[key] = _check_array(ep[key], source, demo, key, ndim, "fiub").astype(np.float32)
        if "next_observations" in clean and clean["next_observations"].shape[1:] != obs.shape[1:]:
            raise DataError(f"{source}: {demo} key 'next_observations' has shape {clean['next_observations'].shape}, "
                            f"'observations' {obs.shape}: a next observation needs its observation's width")
        images, next_images = {}, {}
        for group, found in (("images", images), ("next_images", next_images)):
            for key, frames in (ep.get(group) or {}).items():
                frames = np.asarray(frames)
                if frames.dtype != np.uint8 or frames.ndim != 4:
                    raise DataError(f"{source}: {demo} image key {key!r} has dtype {frames.dtype} and shape "
                                    f"{frames.shape}, expected uint8 (T, H, W, C) frames")
                found[key] = frames
        if next_images and (set(next_images) != set(images) or "next_observations" not in clean
                            or any(next_images[k].shape != images[k].shape for k in images)):
            raise DataError(f"{source}: {demo} has next-observation frames for keys {sorted(next_images)} "
                            f"but frames for {sorted(images)}: expected the same keys and shapes, with next_observations")
        for key, arr in [*clean.items(), *((f"image {k}", v) for k, v in images.items())]:
            if len(arr) != length:
                raise DataError(f"{source}: {demo} is ragged: {key!r} has {len(arr)} steps, 'actions' has {length}")
        if length < 2:
            raise DataError(f"{source}: {demo} has {length} step(s); a demonstration needs at least 2")
        shape = {"observations": obs.shape[1], "actions": act.shape[1],
                 **{f"image {k}": v.shape[1:] for k, v in images.items()},
                 **{k: True for k in ("next_observations", "rewards", "dones") if k in clean}}
        if dims is None:
            dims, first = shape, demo
        elif shape != dims:
            raise DataError(f"{source}: {demo} does not match {first}: {shape} vs {dims} "
                            "(every demo needs the same keys and dimensions)")
        if images:
            clean["images"] = images
        if next_images:
            clean["next_images"] = next_images
        out.append(clean)
    return out


# --------------------------------------------------------------------------- episodes -> transitions

def to_transitions(episodes: list[dict]) -> dict[str, np.ndarray]:
    """The flat layout of `chunks.py` (without rewards/masks, which the reward mode sets)."""
    parts: dict[str, list] = {}
    frames_so_far = 0
    for ep in episodes:
        images = ep.get("images", {})
        if "next_observations" in ep and (not images or "next_images" in ep):
            n, nxt = len(ep["actions"]), ep["next_observations"]
        else:  # s_{t+1} is the next recorded observation; the last action has none (or no frame of it)
            n = len(ep["actions"]) - 1
            nxt = ep["next_observations"] if "next_observations" in ep else ep["observations"][1:]
        arrays = {"observations": ep["observations"][:n], "actions": ep["actions"][:n], "next_observations": nxt[:n],
                  "terminals": np.eye(1, n, n - 1, dtype=np.float32)[0]}
        for key in ("rewards", "dones"):
            if key in ep:
                arrays[key] = ep[key][:n]
        if images:  # every recorded frame once (plus the one after the last action when the file has it)
            for key, frames in images.items():
                extra = [ep["next_images"][key][-1:]] if n == len(frames) else []
                arrays[f"image.{key}"] = np.concatenate([frames, *extra])
            arrays["frame_index"] = (frames_so_far + np.arange(n)).astype(np.int32)
            arrays["next_frame_index"] = arrays["frame_index"] + 1
            frames_so_far += len(arrays[f"image.{next(iter(images))}"])
        for key, value in arrays.items():
            parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


def apply_reward_mode(data: dict, mode: str | None, name: str) -> tuple[dict, str]:
    """(data with `rewards` and `masks`, the mode used); no mode means `given` when there are rewards."""
    if mode is not None and mode not in REWARD_MODES:
        raise ValueError(f"--reward {mode}: expected one of {', '.join(REWARD_MODES)}")
    if mode is None:
        if "rewards" not in data:
            raise ValueError(f"dataset {name} has no rewards; choose a reward mode with --reward sparse-success "
                             "(-1 per step, 0 at the last step of each successful demo)")
        mode = "given"
    out = dict(data)
    if mode == "given":
        if "rewards" not in data:
            raise ValueError(f"--reward given: dataset {name} has no rewards; use --reward sparse-success")
        out["masks"] = 1.0 - data["dones"] if "dones" in data else np.ones_like(data["rewards"])
    else:
        last = data["terminals"] > 0
        out["rewards"] = np.where(last, 0.0, -1.0).astype(np.float32)
        out["masks"] = np.where(last, 0.0, 1.0).astype(np.float32)
    return out, mode


def normalize_transitions(data: dict, norm: Normalization, name: str) -> dict:
    """Observations standardised and actions mapped into [-1, 1] (an action outside the stored
    bounds is an error: the data and its normalization.json disagree)."""
    from .tasks import ACTION_CLIP

    out = dict(data)
    out["observations"] = norm.normalize_obs(data["observations"]).astype(np.float32)
    out["next_observations"] = norm.normalize_obs(data["next_observations"]).astype(np.float32)
    actions = norm.normalize_action(data["actions"]).astype(np.float32)
    outside = np.abs(actions) > 1.0 + BOUNDS_TOL
    if outside.any():
        row, col = map(int, np.argwhere(outside)[0])
        raise ValueError(f"dataset {name}: {int(outside.any(1).sum())} action(s) fall outside the bounds of its "
                         f"{normalization.FILE_NAME} (first: row {row}, dim {col}, value {data['actions'][row, col]:.6g}, "
                         f"bounds [{norm.action_low[col]:.6g}, {norm.action_high[col]:.6g}])")
    out["actions"] = np.clip(actions, -ACTION_CLIP, ACTION_CLIP)
    return out


# --------------------------------------------------------------------------- the cache

def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"--name {name!r}: expected letters, digits, '.', '_' or '-' (at most 100, "
                         "starting with a letter or digit)")
    return name


def fit_normalization(train: dict, action_bounds: tuple | None, source: str, val: dict | None = None) -> Normalization:
    """Observation statistics of the training split; action bounds stated (checked) or fitted, over
    every action of the file: the bounds are the action space's range, and fitted on the training
    split alone a held-out action of a short demo could fall outside them."""
    actions = train["actions"] if val is None else np.concatenate([train["actions"], val["actions"]])
    norm = Normalization.fit(train["observations"], train["actions"])
    if action_bounds is None:
        return Normalization(norm.obs_mean, norm.obs_std, *Normalization.fit_action_bounds(actions))
    low, high = (np.broadcast_to(np.asarray(b, np.float64), (norm.action_dim,)) for b in action_bounds)
    bad = (actions < low - 1e-6) | (actions > high + 1e-6)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{source}: {int(bad.any(1).sum())} action(s) fall outside the stated bounds "
                        f"(first: transition {row}, dim {col}, value {actions[row, col]:.6g} not in "
                        f"[{low[col]:.6g}, {high[col]:.6g}]); check --action-low/--action-high")
    return Normalization(norm.obs_mean, norm.obs_std, tuple(map(float, low)), tuple(map(float, high)))


def import_episodes(episodes: list[dict], name: str, fmt: str, source: str, options: dict | None = None,
                    root: str | os.PathLike | None = None, replace: bool = False,
                    action_bounds: tuple | None = None, demo_names: list[str] | None = None) -> Path:
    """Validate `episodes` and cache them as ``root/name`` (atomically); returns the directory."""
    check_name(name)
    root = Path(root).expanduser() if root is not None else data_root()
    final = root / name
    if final.exists() and not replace:
        raise FileExistsError(f"dataset {name} already exists at {final}; pass --replace to import over it "
                              "or choose another --name")
    episodes = validate_episodes(episodes, source, demo_names)
    n_val = max(1, len(episodes) // 10) if len(episodes) >= 2 else 0
    train = to_transitions(episodes[:len(episodes) - n_val])
    val = to_transitions(episodes[len(episodes) - n_val:]) if n_val else None
    norm = fit_normalization(train, action_bounds, source, val)
    with cache_writer(root, name, f"dataset {final}"), runlock.scratch(root, name) as tmp, naming(final):
        if final.exists() and not replace:  # imported by another process meanwhile
            raise FileExistsError(f"dataset {name} already exists at {final}; pass --replace to import over it")
        files = {}
        for split, arrays in (("train.npz", train), ("val.npz", val)):
            if arrays is not None:
                np.savez(tmp / split, **arrays)
        normalization.save(tmp, norm)
        for p in sorted(tmp.iterdir()):
            files[p.name] = {"sha256": fingerprint(p), "size": p.stat().st_size}
        meta = {"kind": "imported", "name": name, "format": fmt, "source": str(source), "options": options or {},
                "episodes": len(episodes) - n_val, "val_episodes": n_val, "transitions": int(len(train["actions"])),
                "obs_dim": int(train["observations"].shape[1]), "action_dim": int(train["actions"].shape[1]),
                "has_rewards": "rewards" in train, "has_dones": "dones" in train,
                "image_keys": {k[len("image."):]: list(v.shape[1:]) for k, v in train.items() if k.startswith("image.")},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        runlock.replace_dir(tmp, final)
    return final


def imported_meta(name: str, root: str | os.PathLike | None = None) -> dict:
    """meta.json of an imported dataset (cheap: no array is read); errors say how to import it."""
    root = Path(root).expanduser() if root is not None else data_root()
    path = root / check_name(name)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"--dataset {name}: no imported dataset at {path}; import one with "
                                f"`steerflow data import FORMAT PATH --name {name}` (see `steerflow data info`)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("kind") != "imported":
        raise ValueError(f"--dataset {name}: {path} is a generated OGBench dataset; train on it with --task")
    return meta


def load_imported(name: str, root: str | os.PathLike | None = None):
    """(train, val or None, info, Normalization) of an imported dataset, every file's sha256 checked."""
    root = Path(root).expanduser() if root is not None else data_root()
    meta = imported_meta(name, root)
    path = root / name
    problem = check_dir(path)
    if problem:
        raise ValueError(f"dataset {name} is damaged ({problem}); import it again with --replace")
    with np.load(path / "train.npz") as f:
        train = dict(f)
    val = None
    if (path / "val.npz").exists():
        with np.load(path / "val.npz") as f:
            val = dict(f)
    if any(k.startswith("image.") for k in train) and "frame_index" not in train:
        raise ValueError(f"dataset {name} holds image keys in the layout of an older steerflow (frames without "
                         "frame_index); import it again with --replace")
    norm = normalization.load(path)
    info = {"dataset_dir": str(path), "fingerprint": meta["files"]["train.npz"]["sha256"], "format": meta["format"],
            "source": meta["source"], "episodes": meta["episodes"], "obs_dim": meta["obs_dim"],
            "action_dim": meta["action_dim"], "dataset": name}
    return train, val, info, norm


def read_format(fmt: str, path: str | os.PathLike, obs_keys: list[str] | None = None, split: str | None = None):
    """(episodes, demo names, options) from a file or directory in one of `FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if split is not None and fmt != "robomimic":
        raise ValueError(f"--split {split}: filter keys (mask/<split>) exist in robomimic files only")
    if fmt == "robomimic":
        from . import robomimic

        return robomimic.read(path, obs_keys, split)
    if fmt == "lerobot":
        from . import lerobot

        return lerobot.read(path, obs_keys)
    from . import minari_io

    return minari_io.read(path, obs_keys)


def import_path(fmt: str, path: str | os.PathLike, name: str, obs_keys: list[str] | None = None,
                split: str | None = None, root: str | os.PathLike | None = None, replace: bool = False,
                action_bounds: tuple | None = None) -> Path:
    """`steerflow data import`: read, validate and cache; returns the cache directory."""
    check_name(name)
    episodes, names, options = read_format(fmt, path, obs_keys, split)
    return import_episodes(episodes, name, fmt, str(Path(path).resolve()), options, root=root, replace=replace,
                           action_bounds=action_bounds, demo_names=names)
