"""Single-task OGBench manipulation tasks: names, envs and relabelled offline datasets.

Task names: ``DOMAIN-taskN[-sparse]`` (N in 1..5), e.g. ``cube-single-task2`` or
``scene-task1-sparse``. All five tasks of a domain share the one locally generated play dataset
(``ogbench_gen``); OGBench relabels it per task (``r = #satisfied - #sub-goals`` on the pre-action
state, ``mask = 0`` iff the whole task is solved, ``terminals`` = trajectory ends only).
"Sparse" (from the Q-chunking code) maps ``r <- -1 * (r != 0)``; masks are unchanged.
A task's rewards and masks are stored beside the dataset after its first load (`data.labels`), so a
later load builds no env. Dataset actions are clipped to ``±(1 - 1e-5)``
(docs/algorithms.md#ogbench-data). Loading validates before use: readable npz, required keys,
shapes, the sha256 recorded in meta.json, and finite observations, actions and rewards
(``check_finite`` names the key, the count and the first row).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .cache import data_root, fingerprint
from .labels import labels_path, read_labels, write_labels
from .ogbench_gen import (
    ACTION_DIM,
    DEFAULT_EPISODE_STEPS,
    DOMAIN_INFO,
    DOMAINS,
    cache_key,
    dataset_file_names,
    generate_dataset,
    required_keys,
)

NUM_TASKS = 5
ACTION_CLIP = 1.0 - 1e-5
# the one task-name pattern: `parse_task` accepts the parts it checks, `steerflow.report` groups any name by them
_TASK_RE = re.compile(r"^(?P<domain>.+)-task(?P<n>\d+)(?P<suffix>(?:-[A-Za-z0-9_]+)*)$")


class TaskParts(NamedTuple):
    """The parts of a name of the form ``DOMAIN-taskN[-WORD...]``, unchecked."""

    domain: str
    number: int
    suffix: str  # "" or "-sparse" in a task name `parse_task` accepts; any `-WORD...` otherwise


def split_task(name: str) -> TaskParts | None:
    """Split ``DOMAIN-taskN[-WORD...]`` leniently (any domain, number and ``-WORD`` suffixes, as a
    user environment's or a reference run's task may be named); None for a name of another form."""
    m = _TASK_RE.match(name) if isinstance(name, str) else None
    return TaskParts(m.group("domain"), int(m.group("n")), m.group("suffix")) if m else None


@dataclass(frozen=True)
class TaskSpec:
    domain: str
    task_id: int
    sparse: bool = False

    def __post_init__(self):
        if self.domain not in DOMAIN_INFO:
            raise ValueError(f"unknown domain {self.domain!r}; {_expected_form()}")
        if not (1 <= int(self.task_id) <= NUM_TASKS):
            raise ValueError(f"task id {self.task_id} outside 1..{NUM_TASKS}; {_expected_form()}")

    @property
    def name(self) -> str:
        return f"{self.domain}-task{self.task_id}" + ("-sparse" if self.sparse else "")

    @property
    def env_name(self) -> str:
        return f"{self.domain}-singletask-task{self.task_id}-v0"

    @property
    def dataset_name(self) -> str:
        return f"{self.domain}-play-singletask-task{self.task_id}-v0"

    @property
    def episode_length(self) -> int:
        return DOMAIN_INFO[self.domain].episode_length

    @property
    def obs_dim(self) -> int:
        return DOMAIN_INFO[self.domain].obs_dim

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    def rewards_masks(self, env_rewards: np.ndarray, success: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Online transitions' rewards and masks (`online_rewards_masks`; OGBench's pre-action
        reward already says whether the task is solved, so `success` is not needed)."""
        return online_rewards_masks(self, env_rewards)

    def make(self, render_mode: str | None = None):
        """The task's single-task env (`steerflow.envs`' contract); `render_mode="rgb_array"` for frames."""
        return make_env(self, **({"render_mode": render_mode} if render_mode else {}))


def _expected_form() -> str:
    return (
        f"expected DOMAIN-taskN[-sparse] with N in 1..{NUM_TASKS} and DOMAIN one of "
        f"{', '.join(DOMAINS)} (e.g. cube-single-task2, scene-task1-sparse)"
    )


def parse_task(name: str) -> TaskSpec:
    """Parse ``DOMAIN-taskN[-sparse]`` into a :class:`TaskSpec` (ValueError otherwise)."""
    parts = split_task(name.strip()) if isinstance(name, str) else None
    if parts is None or parts.suffix not in ("", "-sparse"):
        raise ValueError(f"malformed task name {name!r}; {_expected_form()}")
    domain, n = parts.domain, parts.number
    if domain not in DOMAIN_INFO:
        raise ValueError(f"unknown domain {domain!r} in task name {name!r}; {_expected_form()}")
    if not (1 <= n <= NUM_TASKS):
        raise ValueError(f"task number {n} in {name!r} outside 1..{NUM_TASKS}; {_expected_form()}")
    return TaskSpec(domain=domain, task_id=n, sparse=parts.suffix == "-sparse")


def make_env(spec: TaskSpec, **env_kwargs):
    """The single-task gymnasium env for ``spec`` (offline; no dataset is touched)."""
    from steerflow import gl

    gl.settle()
    import ogbench

    return ogbench.make_env_and_datasets(spec.dataset_name, env_only=True, **env_kwargs)


def sparse_rewards(rewards: np.ndarray) -> np.ndarray:
    """``r <- -1 * (r != 0)``."""
    return -(np.asarray(rewards) != 0).astype(np.float32)


def online_rewards_masks(spec: TaskSpec, env_rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and masks of online transitions, as the offline relabelling gives them: the
    single-task env's step reward is ``#satisfied - #sub-goals`` of the pre-action state (its
    ``success_timing='pre'``), which is OGBench's relabelled r_t; ``mask = 0`` iff the task is solved
    there, i.e. iff that reward is 0; then the same sparse mapping as the dataset's."""
    env_rewards = np.asarray(env_rewards, np.float32)
    masks = (env_rewards != 0).astype(np.float32)
    return (sparse_rewards(env_rewards) if spec.sparse else env_rewards), masks


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _corrupt(path: Path, detail: str) -> ValueError:
    return ValueError(
        f"dataset file {path} is corrupt or truncated ({detail}); delete the directory "
        f"{path.parent} and regenerate it (steerflow data generate)"
    )


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes/dtypes of every array in an npz, reading only the .npy headers."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    out = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            except Exception as e:  # noqa: BLE001 - any failure here means an unreadable file
                raise _corrupt(path, f"cannot read array {key!r}: {type(e).__name__}: {e}") from e
            out[key] = (tuple(shape), dtype)
    return out


def validate_npz(path: str | os.PathLike, domain: str) -> dict[str, tuple[int, ...]]:
    """Check an npz for readability, required keys and shapes; returns ``{key: shape}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} not found")
    info = DOMAIN_INFO[domain]
    headers = _npz_headers(path)
    for key in required_keys(domain):
        if key not in headers:
            raise ValueError(
                f"dataset file {path} is missing required key {key!r} "
                f"(found: {', '.join(sorted(headers)) or 'none'}); delete {path.parent} and regenerate"
            )
    shapes = {k: headers[k][0] for k in required_keys(domain)}
    expected_2d = {
        "observations": info.obs_dim,
        "actions": ACTION_DIM,
        "qpos": info.qpos_dim,
        "qvel": info.qvel_dim,
    }
    if info.num_buttons:
        expected_2d["button_states"] = info.num_buttons
    for key, dim in expected_2d.items():
        shape = shapes[key]
        if len(shape) != 2 or shape[1] != dim:
            raise ValueError(
                f"dataset file {path}: key {key!r} has shape {shape}, expected (N, {dim}) "
                f"for domain {domain}"
            )
    if len(shapes["terminals"]) != 1:
        raise ValueError(f"dataset file {path}: key 'terminals' has shape {shapes['terminals']}, expected (N,)")
    n = {k: s[0] for k, s in shapes.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"dataset file {path}: arrays disagree on the first dimension: {n}")
    if shapes["observations"][0] == 0:
        raise ValueError(f"dataset file {path} is empty (0 rows)")
    return shapes


def _check_fingerprint(path: Path, meta: dict) -> str:
    recorded = meta.get("files", {}).get(path.name, {}).get("sha256")
    actual = fingerprint(path)
    if recorded is None:
        raise ValueError(f"meta.json in {path.parent} has no fingerprint for {path.name}; delete the directory and regenerate")
    if recorded != actual:
        raise ValueError(
            f"dataset file {path} does not match its fingerprint in meta.json "
            f"(recorded {recorded[:16]}, actual {actual[:16]}); it was modified or is corrupt: "
            f"delete {path.parent} and regenerate"
        )
    return actual


def check_finite(arrays: dict, path: Path, episode_steps: int,
                 keys=("observations", "actions", "rewards", "next_observations")) -> None:
    """ValueError naming the key, the count and the first row of any NaN or inf in ``arrays``
    (a relabelled dataset: ``episode_steps - 1`` transitions per episode; rows are given as rows
    of the file, ``episode * episode_steps + step``)."""
    per_episode = episode_steps - 1
    for key in keys:
        if key not in arrays:
            continue
        values = np.asarray(arrays[key])
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        rows = np.flatnonzero(bad.reshape(len(values), -1).any(1))
        episode, step = divmod(int(rows[0]), per_episode)
        if key == "next_observations":  # an episode's last observation: the file's 'observations' one row on
            key, step = "observations", step + 1
        kinds = " and ".join(k for k, m in (("NaN", np.isnan(values)), ("inf", np.isinf(values))) if m.any())
        raise ValueError(
            f"dataset file {path}: {key!r} holds {int(bad.sum())} non-finite value(s) ({kinds}) in {len(rows)} "
            f"row(s), the first at row {episode * episode_steps + step} of the file (episode {episode}, step "
            f"{step}); training on it would give NaN losses. Delete {path.parent} and regenerate it"
        )


def _to_float32(d: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in d.items():
        v = np.asarray(v)
        out[k] = v.astype(np.float32, copy=False) if v.dtype.kind == "f" or k in ("terminals", "masks") else v
    return out


def _ensure_generated(spec: TaskSpec, ddir: Path, episodes: int, seed: int, root: Path, generate: bool,
                      workers: int, episode_steps: int) -> None:
    """Generate the play dataset into `ddir` when it is not cached (or say how to, without `generate`)."""
    if ddir.exists():
        return
    if not generate:
        steps = "" if episode_steps == DEFAULT_EPISODE_STEPS else f" (episode_steps={episode_steps})"
        raise FileNotFoundError(
            f"dataset for {spec.domain} not found at {ddir}{steps}; generate it with "
            f"`steerflow data generate {spec.domain} --episodes {episodes} --seed {seed}`"
        )
    print(
        f"[steerflow] dataset {ddir.name} not cached; generating {episodes}+{max(1, episodes // 10)} "
        f"episodes of {spec.domain} into {ddir} (one-time, ~1.2 s/episode/worker)",
        flush=True,
    )
    generate_dataset(spec.domain, episodes=episodes, seed=seed, workers=workers, root=root, episode_steps=episode_steps)


def _checked_meta(spec: TaskSpec, ddir: Path, paths: tuple[Path, Path], episodes: int,
                  seed: int) -> tuple[dict, tuple[str, str]]:
    """The cache entry's meta.json and the (train, val) files' fingerprints, after checking both
    files' headers and fingerprints against it (before anything is relabelled)."""
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"dataset file {p} is missing; delete {ddir} and regenerate it "
                f"(`steerflow data generate {spec.domain} --episodes {episodes} --seed {seed}`)"
            )
        validate_npz(p, spec.domain)
    meta_path = ddir / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} is missing (incomplete dataset); delete {ddir} and regenerate")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); delete {ddir} and regenerate") from e
    return meta, (_check_fingerprint(paths[0], meta), _check_fingerprint(paths[1], meta))


def _ogbench_datasets(spec: TaskSpec, paths: tuple[Path, Path], store: Path,
                      fingerprints: tuple[str, str]) -> tuple[tuple, bool]:
    """The cached files (train, val) as OGBench reads them, with the task's rewards and masks: those
    stored in `store` (`data.labels`; then True), else OGBench's relabelling with the task's env."""
    from steerflow import gl

    gl.settle()
    stored = read_labels(store, fingerprints)
    if stored is not None:
        datasets = tuple(_ogbench_read(p) for p in paths)
        if all(len(d["observations"]) == len(lab["rewards"]) for d, lab in zip(datasets, stored)):
            return tuple(d | lab for d, lab in zip(datasets, stored)), True
    return _ogbench_relabelled(spec, paths[0]), False


def _ogbench_read(path: Path) -> dict:
    """One file as `ogbench.make_env_and_datasets` reads it, without its env (no labels)."""
    from ogbench.utils import load_dataset

    try:
        return load_dataset(str(path), compact_dataset=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e


def _ogbench_relabelled(spec: TaskSpec, train_path: Path) -> tuple[dict, dict]:
    """OGBench's reading of the cached files (train, val) relabelled by its env, whose observation
    size is checked."""
    import ogbench

    try:
        env, train, val = ogbench.make_env_and_datasets(
            spec.dataset_name, dataset_path=str(train_path), compact_dataset=False
        )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise _corrupt(train_path, f"{type(e).__name__}: {e}") from e
    obs_dim = int(np.prod(env.observation_space.shape))
    env.close()
    if obs_dim != spec.obs_dim:  # guards the DOMAIN_INFO table against the installed package
        raise ValueError(f"env {spec.env_name} has observation dim {obs_dim}, expected {spec.obs_dim}")
    return train, val


def _relabelled(d: dict, path: Path, spec: TaskSpec, episode_steps: int) -> dict[str, np.ndarray]:
    """float32 arrays, checked finite, with the task's rewards (sparse tasks: `sparse_rewards`) and
    actions clipped to ±ACTION_CLIP."""
    d = _to_float32(d)
    check_finite(d, path, episode_steps)
    if spec.sparse:
        d["rewards"] = sparse_rewards(d["rewards"])
    d["actions"] = np.clip(d["actions"], -ACTION_CLIP, ACTION_CLIP)
    return d


def load_task_dataset(
    spec: TaskSpec | str,
    episodes: int = 1000,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    generate_if_missing: bool = True,
    workers: int = 1,
    episode_steps: int = DEFAULT_EPISODE_STEPS,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Load (generating if missing) the play dataset of ``spec.domain`` relabelled for the task.

    Returns ``(train, val, info)``; train/val hold float32 ``observations, actions, rewards,
    masks, terminals, next_observations``; info = {dataset_dir, fingerprint, episodes, seed,
    obs_dim, action_dim}.
    """
    if isinstance(spec, str):
        spec = parse_task(spec)
    root_path = Path(root).expanduser() if root is not None else data_root()
    ddir = root_path / cache_key(spec.domain, episodes, seed, episode_steps)
    paths = tuple(ddir / name for name in dataset_file_names(spec.domain))
    _ensure_generated(spec, ddir, episodes, seed, root_path, generate_if_missing, workers, episode_steps)
    meta, fingerprints = _checked_meta(spec, ddir, paths, episodes, seed)
    steps_per_episode = int(meta.get("episode_steps", episode_steps))
    store = labels_path(ddir, spec.task_id)
    datasets, stored = _ogbench_datasets(spec, paths, store, fingerprints)
    train, val = (_relabelled(d, p, spec, steps_per_episode) for d, p in zip(datasets, paths))
    if not stored:  # only the labels of files that passed every check
        write_labels(store, datasets, fingerprints)
    info = {
        "dataset_dir": str(ddir),
        "fingerprint": fingerprints[0],
        "episodes": int(meta.get("episodes", episodes)),
        "seed": int(meta.get("seed", seed)),
        "obs_dim": spec.obs_dim,
        "action_dim": ACTION_DIM,
        "task": spec.name,
    }
    return train, val, info
