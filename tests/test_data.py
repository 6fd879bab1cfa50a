"""Data layer: deterministic play-data generation, task parsing, validated task loading."""

import json
import os
import shutil

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from steerflow.data import (
    DOMAINS,
    TaskSpec,
    cache_key,
    generate_dataset,
    generate_episodes,
    list_datasets,
    load_task_dataset,
    parse_task,
)
from steerflow.data import cache, ogbench_gen

STEPS = 101  # short episodes keep the tests fast
EPISODES = 3  # + 1 validation episode


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def test_generate_episodes_deterministic():
    a = generate_episodes("cube-single", 2, seed=3, episode_steps=STEPS)
    b = generate_episodes("cube-single", 2, seed=3, episode_steps=STEPS)
    c = generate_episodes("cube-single", 2, seed=4, episode_steps=STEPS)
    assert set(a) == {"observations", "actions", "terminals", "qpos", "qvel"}
    assert a["observations"].shape == (2 * STEPS, 28) and a["observations"].dtype == np.float32
    assert a["actions"].shape == (2 * STEPS, 5) and a["actions"].dtype == np.float32
    assert a["terminals"].dtype == np.bool_
    assert a["qpos"].shape == (2 * STEPS, 21) and a["qvel"].shape == (2 * STEPS, 20)
    assert np.flatnonzero(a["terminals"]).tolist() == [STEPS - 1, 2 * STEPS - 1]
    assert np.all(np.abs(a["actions"]) <= 1.0)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["actions"], c["actions"])


def test_sharded_generation_independent_of_workers():
    # 1-episode shards so that two spawn workers actually split the work.
    kw = dict(episode_steps=31, shard_episodes=1)
    one = ogbench_gen.generate_sharded("cube-single", 3, 11, workers=1, **kw)
    two = ogbench_gen.generate_sharded("cube-single", 3, 11, workers=2, **kw)
    for k in one:
        assert np.array_equal(one[k], two[k]), k


def test_cache_key():
    key = cache_key("cube-single", 1000, 0)
    assert key.startswith("cube-single-play-e1000-s0-ogbench")
    assert "-mujoco" in key
    assert "-t101-" in cache_key("cube-single", 3, 0, episode_steps=101)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    path = generate_dataset(
        "cube-single", episodes=EPISODES, seed=0, root=root, show_progress=False, episode_steps=STEPS
    )
    return root, path


def test_generate_dataset_layout_and_cache(tiny_root):
    root, path = tiny_root
    assert path == root / cache_key("cube-single", EPISODES, 0, episode_steps=STEPS)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["episodes"] == EPISODES and meta["val_episodes"] == 1 and meta["seed"] == 0
    with np.load(path / "cube-single-play-v0.npz") as f:
        assert f["observations"].shape == (EPISODES * STEPS, 28)
    with np.load(path / "cube-single-play-v0-val.npz") as f:
        assert f["observations"].shape == (STEPS, 28)
    for name, entry in meta["files"].items():
        assert entry["sha256"] == cache.fingerprint(path / name)
    # No temporary directories left behind.
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    # Cached: a second call returns the same directory without rewriting it.
    mtime = (path / "meta.json").stat().st_mtime_ns
    assert generate_dataset("cube-single", EPISODES, 0, root=root, show_progress=False, episode_steps=STEPS) == path
    assert (path / "meta.json").stat().st_mtime_ns == mtime
    info = list_datasets(root)
    assert len(info) == 1 and info[0]["episodes"] == EPISODES and info[0]["valid"]


# ---------------------------------------------------------------------------------------------
# Task names
# ---------------------------------------------------------------------------------------------


def test_parse_task():
    spec = parse_task("cube-single-task2")
    assert spec == TaskSpec("cube-single", 2, False)
    assert spec.env_name == "cube-single-singletask-task2-v0"
    assert spec.dataset_name == "cube-single-play-singletask-task2-v0"
    assert spec.episode_length == 200
    s = parse_task("puzzle-3x3-task5-sparse")
    assert (s.domain, s.task_id, s.sparse, s.episode_length) == ("puzzle-3x3", 5, True, 500)
    assert parse_task("scene-task1").episode_length == 750


@pytest.mark.parametrize(
    "name", ["cube-triple-task1", "cube-single-task0", "cube-single-task6", "cube-single", "scene-task1-dense", "task1", ""]
)
def test_parse_task_errors(name):
    with pytest.raises(ValueError) as e:
        parse_task(name)
    msg = str(e.value)
    assert "DOMAIN-taskN[-sparse]" in msg
    for d in DOMAINS:
        assert d in msg


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _load(root, task="cube-single-task1", **kw):
    return load_task_dataset(
        parse_task(task), episodes=EPISODES, seed=0, root=root, generate_if_missing=False, episode_steps=STEPS, **kw
    )


def test_load_task_dataset(tiny_root):
    root, path = tiny_root
    train, val, info = _load(root)
    n = EPISODES * (STEPS - 1)
    assert train["observations"].shape == (n, 28) and train["next_observations"].shape == (n, 28)
    assert train["actions"].shape == (n, 5)
    assert val["observations"].shape == (STEPS - 1, 28)
    for d in (train, val):
        assert set(d) == {"observations", "actions", "rewards", "masks", "terminals", "next_observations"}
        assert all(v.dtype == np.float32 for v in d.values())
        assert np.all(d["rewards"] <= 0) and np.all(np.isin(d["rewards"], [-1.0, 0.0]))
        assert np.all(np.isin(d["masks"], [0.0, 1.0]))
        assert np.all(np.abs(d["actions"]) <= 1 - 1e-5)
    assert train["terminals"].sum() == EPISODES
    assert np.flatnonzero(train["terminals"]).tolist() == [(i + 1) * (STEPS - 1) - 1 for i in range(EPISODES)]
    assert info["dataset_dir"] == str(path) and info["obs_dim"] == 28 and info["action_dim"] == 5
    assert info["fingerprint"] == cache.fingerprint(path / "cube-single-play-v0.npz")
    assert info["episodes"] == EPISODES and info["seed"] == 0

    # Sparse transform: r <- -1 * (r != 0); masks unchanged.
    strain, _, _ = _load(root, task="cube-single-task1-sparse")
    assert np.array_equal(strain["rewards"], -(train["rewards"] != 0).astype(np.float32))
    assert np.array_equal(strain["masks"], train["masks"])


def test_missing_dataset_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        _load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "steerflow data generate" in msg


@pytest.fixture
def copy_root(tiny_root, tmp_path):
    root, path = tiny_root
    dst = tmp_path / path.name
    shutil.copytree(path, dst)
    return tmp_path, dst


def _no_env(*args, **kwargs):
    raise AssertionError("built an env")


def _assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        assert list(x) == list(y)
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k
    assert a[2] == b[2]


def test_a_tasks_labels_are_stored_beside_its_dataset_so_a_later_load_builds_no_env(copy_root, monkeypatch):
    """The first load of a task relabels with OGBench's env and stores the rewards and masks; a later
    load gives the same arrays, bit for bit, without building an env; stored labels whose fingerprints
    are another file's are not used."""
    import gymnasium

    root, path = copy_root
    shutil.rmtree(path / "labels", ignore_errors=True)
    first = _load(root, task="cube-single-task2")
    store = path / "labels" / "task2.npz"
    assert store.is_file() and not (path / "labels" / "task1.npz").exists()
    with monkeypatch.context() as m:
        m.setattr(gymnasium, "make", _no_env)
        _assert_same(first, _load(root, task="cube-single-task2"))
        _assert_same(_load(root, task="cube-single-task2-sparse"), _load(root, task="cube-single-task2-sparse"))
        with np.load(store) as z:
            arrays = {k: z[k] for k in z.files}
        np.savez(store, **(arrays | {"train_sha256": np.array("0" * 64), "train_rewards": arrays["train_rewards"] + 5}))
        with pytest.raises(AssertionError, match="built an env"):
            _load(root, task="cube-single-task2")
    _assert_same(first, _load(root, task="cube-single-task2"))  # relabelled and stored again
    assert [k for k in list_datasets(root)[0]["files"]] == ["cube-single-play-v0-val.npz", "cube-single-play-v0.npz"]


def test_truncated_npz(copy_root):
    root, path = copy_root
    f = path / "cube-single-play-v0.npz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        _load(root)
    msg = str(e.value)
    assert str(f) in msg and "truncated" in msg and "regenerate" in msg


def _rewrite(f, **changes):
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez_compressed(f, **arrays)


def test_missing_key(copy_root):
    root, path = copy_root
    f = path / "cube-single-play-v0-val.npz"
    _rewrite(f, qpos=None)
    with pytest.raises(ValueError) as e:
        _load(root)
    msg = str(e.value)
    assert str(f) in msg and "'qpos'" in msg


def test_wrong_observation_shape(copy_root):
    root, path = copy_root
    f = path / "cube-single-play-v0.npz"
    with np.load(f) as z:
        obs = z["observations"]
    _rewrite(f, observations=np.zeros((obs.shape[0], 27), np.float32))
    with pytest.raises(ValueError) as e:
        _load(root)
    msg = str(e.value)
    assert str(f) in msg and "'observations'" in msg and f"({obs.shape[0]}, 27)" in msg and "(N, 28)" in msg


def test_fingerprint_mismatch(copy_root):
    root, path = copy_root
    f = path / "cube-single-play-v0.npz"
    with np.load(f) as z:
        obs = z["observations"]
    _rewrite(f, observations=obs + 1.0)  # valid file, different content
    with pytest.raises(ValueError) as e:
        _load(root)
    assert str(f) in str(e.value) and "fingerprint" in str(e.value)
