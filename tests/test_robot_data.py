"""A practitioner's own demonstrations: cube-single oracle episodes written by the project into
robomimic HDF5, a LeRobot v3 directory and a Minari dataset, read back by each importer (round
trip against the source episodes), cached with fingerprints and normalisation, trained on with
the reward modes, and malformed files refused with the file and key named and nothing cached."""

import json
import re
import shutil

import h5py
import numpy as np
import pytest

from steerflow import cli
from steerflow.demos import writers as ex
from steerflow.data import imports, normalization
from steerflow.data.normalization import Normalization

ROBOMIMIC_ORDER = ",".join(ex.ROBOMIMIC_KEYS)  # the source's column order


@pytest.fixture(scope="module")
def episodes():
    # 101-step episodes share the env the smoke preset's tiny datasets use (cached per process)
    return ex.oracle_episodes(4, seed=0, episode_steps=101)


@pytest.fixture(scope="module")
def files(episodes, tmp_path_factory):
    d = tmp_path_factory.mktemp("robot")
    no_rewards = [{k: v for k, v in ep.items() if k not in ("rewards", "dones")} for ep in episodes]
    return {"robomimic": ex.write_robomimic(d / "demos.hdf5", episodes, splits={"train": [0, 1, 2], "valid": [3]}),
            "robomimic-norew": ex.write_robomimic(d / "demos_norew.hdf5", no_rewards),
            "lerobot": ex.write_lerobot(d / "lerobot", episodes),
            "minari": ex.write_minari(d / "minari", episodes)}


@pytest.fixture(scope="module")
def imported(files, data_root):
    """The source episodes imported from each format ("rt-FORMAT") and without rewards ("norew")."""
    for fmt in ("robomimic", "lerobot", "minari"):
        keys = ROBOMIMIC_ORDER.split(",") if fmt == "robomimic" else None
        imports.import_path(fmt, files[fmt], f"rt-{fmt}", obs_keys=keys)
    imports.import_path("robomimic", files["robomimic-norew"], "norew")
    return data_root


def _import(argv, capsys=None):
    cli.main(["data", "import", *argv])
    return capsys.readouterr().out if capsys else None


def _nothing_cached(root, name):
    return not (root / name).exists() and not list(root.glob(f".tmp-{name}-*"))


@pytest.mark.parametrize("fmt", ["robomimic", "lerobot", "minari"])
def test_each_format_round_trips_the_source_episodes(fmt, files, episodes, data_root, capsys):
    """Through the CLI: every key equals the source's transitions, split 3+1 demos."""
    source = imports.to_transitions(imports.validate_episodes(episodes, "source"))
    keys = ["--obs-keys", ROBOMIMIC_ORDER] if fmt == "robomimic" else []
    out = _import([fmt, str(files[fmt]), "--name", f"cli-{fmt}", *keys], capsys)
    assert "imported 3+1 demos" in out
    train, val, info, norm = imports.load_imported(f"cli-{fmt}")
    n_train = 3 * 100  # T = 101 recorded steps give 100 transitions per demo
    for key in ("observations", "actions", "next_observations", "terminals", "rewards", "dones"):
        np.testing.assert_array_equal(np.concatenate([train[key], val[key]]), source[key], err_msg=key)
    assert len(train["actions"]) == n_train and train["terminals"].sum() == 3
    # normalisation fitted on the training split only, and stored with the files' fingerprints
    expected = Normalization.fit(source["observations"][:n_train], source["actions"][:n_train])
    normalization.check_same(expected, norm, "test")
    meta = json.loads((data_root / f"cli-{fmt}" / "meta.json").read_text())
    assert set(meta["files"]) == {"train.npz", "val.npz", "normalization.json"} and meta["format"] == fmt


def test_robomimic_default_keys_are_sorted_and_a_filter_key_selects_demos(files, episodes, data_root):
    eps, names, options = imports.read_format("robomimic", files["robomimic"], split="valid")
    assert names == ["data/demo_3"] and options["obs_keys"] == sorted(ex.ROBOMIMIC_KEYS)
    cols = [ex.ROBOMIMIC_KEYS[k] for k in sorted(ex.ROBOMIMIC_KEYS)]
    np.testing.assert_array_equal(eps[0]["observations"],
                                  np.concatenate([episodes[3]["observations"][:, c] for c in cols], 1))
    with pytest.raises(imports.DataError, match=r"no filter key mask/test \(has: train, valid\)"):
        imports.read_format("robomimic", files["robomimic"], split="test")


def test_image_keys_are_cached_as_uint8_frames_with_their_indices(episodes, tmp_path, data_root, capsys):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (len(ep["actions"]), 64, 64, 3), dtype=np.uint8) for ep in episodes]
    path = ex.write_robomimic(tmp_path / "img.hdf5", episodes, images={"agentview_image": frames})
    _import(["robomimic", str(path), "--name", "img", "--obs-keys", f"{ROBOMIMIC_ORDER},agentview_image"], capsys)
    train, val, _, _ = imports.load_imported("img")
    assert train["image.agentview_image"].dtype == np.uint8
    # every recorded frame once; transition t of a demo points at frames t and t+1 of it
    np.testing.assert_array_equal(np.concatenate([train["image.agentview_image"], val["image.agentview_image"]]),
                                  np.concatenate(frames))
    starts = np.cumsum([0] + [len(f) for f in frames[:2]])
    expected = np.concatenate([s + np.arange(len(f) - 1) for s, f in zip(starts, frames[:3])])
    np.testing.assert_array_equal(train["frame_index"], expected)
    np.testing.assert_array_equal(train["next_frame_index"], expected + 1)
    assert json.loads((data_root / "img" / "meta.json").read_text())["image_keys"] == {"agentview_image": [64, 64, 3]}


def test_a_rewardless_dataset_needs_a_reward_mode_and_sparse_success_labels_demo_ends(imported, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--agent", "bc-mf", "--dataset", "norew", "--preset", "smoke"])
    assert err.value.code == 2 and "--reward sparse-success" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--agent", "bc-mf", "--dataset", "norew", "--reward", "given", "--preset", "smoke"])
    assert "has no rewards" in capsys.readouterr().err
    train, _, _, _ = imports.load_imported("norew")
    labelled, mode = imports.apply_reward_mode(train, "sparse-success", "norew")
    ends = train["terminals"] > 0
    assert mode == "sparse-success" and ends.sum() == 3
    assert (labelled["rewards"][ends] == 0).all() and (labelled["rewards"][~ends] == -1).all()
    assert (labelled["masks"][ends] == 0).all() and (labelled["masks"][~ends] == 1).all()
    given, mode = imports.apply_reward_mode(imports.load_imported("rt-robomimic")[0], None, "rt-robomimic")
    assert mode == "given" and (given["masks"] == 1 - imports.load_imported("rt-robomimic")[0]["dones"]).all()


def test_training_on_an_imported_dataset_stores_its_normalisation_and_reward_mode(imported, tmp_path, capsys):
    data_root = imported
    out = tmp_path / "run"
    cli.main(["train", "--agent", "lps", "--dataset", "norew", "--reward", "sparse-success", "--preset", "smoke",
              "--seeds", "0,1", "--out", str(out)])
    assert "held-out action MSE" in capsys.readouterr().out
    final = json.loads((out / "final.json").read_text())
    assert final["metric"] == "val_action_mse" and final["reward"] == "sparse-success" and final["dataset"] == "norew"
    assert len(final["val_action_mse"]) == 2 and all(np.isfinite(final["val_action_mse"]))
    assert final["final_success"] is None
    config = json.loads((out / "config.json").read_text())["run"]
    assert (config["dataset"], config["reward"], config["task"]) == ("norew", "sparse-success", "dataset:norew")
    norm = normalization.load(out)
    normalization.check_same(normalization.load(data_root / "norew"), norm, "run dir")
    # a policy loaded from the run acts on raw observations and returns actions in the data's own units
    from steerflow import policy

    loaded = policy.load(out)
    raw = np.load(data_root / "norew" / "train.npz")["observations"][:5]
    chunks = loaded.act(raw)
    assert loaded.obs_dim == norm.obs_dim and chunks.shape == (5, loaded.horizon, norm.action_dim)
    low, high = np.asarray(norm.action_low), np.asarray(norm.action_high)
    assert np.all(chunks >= low - 1e-5) and np.all(chunks <= high + 1e-5)
    # ...which is the network's own output on normalised observations, mapped back: the same run
    # with an identity normalization.json, fed normalised observations, gives the inner chunks
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    normalization.save(bare, normalization.Normalization.identity(norm.obs_dim, norm.action_dim))
    inner = policy.load(bare).act(norm.normalize_obs(raw).astype(np.float32))
    np.testing.assert_allclose(chunks, norm.denormalize_action(inner.reshape(5, -1)).reshape(chunks.shape),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(chunks, inner, atol=1e-3)  # the statistics are not the identity
    # the same data with other statistics (stated action bounds) no longer fits the checkpoint
    _import(["robomimic", str(json.loads((data_root / "norew" / "meta.json").read_text())["source"]),
             "--name", "norew", "--replace", "--action-low", "-2", "--action-high", "2"], capsys)
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--agent", "lps", "--dataset", "norew", "--reward", "sparse-success", "--preset", "smoke",
                  "--seeds", "0,1", "--out", str(out), "--steps", "60", "--resume"])
    assert err.value.code == 2 and "action_low differs from the run's stored normalisation" in capsys.readouterr().err


def test_an_imported_run_evaluates_in_the_env_with_its_normalisation(imported, tmp_path, capsys):
    from steerflow import train as trainer

    out = tmp_path / "eval-run"
    cli.main(["train", "--agent", "bc-mf", "--dataset", "rt-minari", "--eval-task", "cube-single-task2",
              "--preset", "smoke", "--out", str(out)])
    final = json.loads((out / "final.json").read_text())
    assert final["task"] == "cube-single-task2" and final["reward"] == "given" and 0 <= final["final_success"][0] <= 1
    assert not normalization.load(out).is_identity()
    # beside success, each evaluation scores the held-out demos: the same numbers as a run without an env
    records = [json.loads(f.read_text()) for f in sorted((out / "evals").glob("step_*.json"))]
    assert records and all(r["scored_on"] == "val" and len(r["val_action_mse"]) == 1 for r in records)
    assert final["val_action_mse"] == records[-1]["val_action_mse"] and final["metric"] == "success"
    envless = tmp_path / "envless-run"
    cli.main(["train", "--agent", "bc-mf", "--dataset", "rt-minari", "--preset", "smoke", "--out", str(envless)])
    assert json.loads((envless / "final.json").read_text())["val_action_mse"] == final["val_action_mse"]
    (record,) = trainer.evaluate_run(out, episodes=2, workers=0)
    assert record["step"] == 40
    # the command a `--parallel processes` child runs carries the dataset flags
    cmd = trainer.train_command(trainer.RunSpec(**json.loads((out / "config.json").read_text())["run"]), out)
    assert "--task" not in cmd and cmd[cmd.index("--dataset") + 1] == "rt-minari"
    assert cmd[cmd.index("--eval-task") + 1] == "cube-single-task2"


def test_data_info_lists_imported_datasets(imported, capsys):
    cli.main(["data", "info"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    imported = {r["name"]: r for r in rows if r.get("kind") == "imported"}
    assert {"rt-robomimic", "rt-lerobot", "rt-minari"} <= set(imported)
    assert all(r["valid"] and r["files"]["train.npz"]["sha256"] for r in imported.values())


def test_actions_outside_the_stated_or_stored_bounds_are_refused(files, data_root, capsys):
    with pytest.raises(SystemExit) as err:
        _import(["robomimic", str(files["robomimic"]), "--name", "tight", "--action-low", "-0.1",
                 "--action-high", "0.1"])
    assert err.value.code == 2 and "outside the stated bounds" in capsys.readouterr().err
    assert _nothing_cached(data_root, "tight")
    data = {"observations": np.zeros((2, 3), np.float32), "next_observations": np.zeros((2, 3), np.float32),
            "actions": np.array([[0.5], [3.0]], np.float32)}
    with pytest.raises(ValueError, match="row 1, dim 0, value 3"):
        imports.normalize_transitions(data, Normalization.identity(3, 1), "d")


# ---------------------------------------------------------------------------- malformed files

def _robomimic_with(tmp_path, episodes, edit):
    path = ex.write_robomimic(tmp_path / "bad.hdf5", episodes[:2])
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _replace(f, key, data):
    del f[key]
    f.create_dataset(key, data=data)


MALFORMED_ROBOMIMIC = {
    "missing actions": (lambda f: f["data/demo_1"].__delitem__("actions"), r"data/demo_1 has no 'actions'"),
    "missing obs key": (lambda f: f["data/demo_0/obs"].__delitem__("object"), r"data/demo_0/obs has no key 'object'"),
    "ragged demo": (lambda f: _replace(f, "data/demo_1/actions", f["data/demo_1/actions"][:-3]),
                    r"data/demo_1 is ragged: 'observations' has 101 steps, 'actions' has 98"),
    "wrong dtype": (lambda f: _replace(f, "data/demo_0/actions", np.ones((101, 5), np.int32)),
                    r"data/demo_0 key 'actions' has dtype int32, expected a floating array"),
    "NaN": (lambda f: f["data/demo_1/obs/object"].__setitem__((7, 2), np.nan),
            r"data/demo_1 key 'observations' holds 1 non-finite value\(s\) \(NaN or inf\), the first at step 7"),
    "other dims": (lambda f: _replace(f, "data/demo_1/actions", np.zeros((101, 4), np.float32)),
                   r"data/demo_1 does not match data/demo_0"),
    "no data group": (lambda f: f.__delitem__("data"), r"no 'data' group"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ROBOMIMIC))
def test_malformed_robomimic_files_are_named_and_nothing_is_cached(case, episodes, tmp_path, data_root, capsys):
    edit, message = MALFORMED_ROBOMIMIC[case]
    path = _robomimic_with(tmp_path, episodes, edit)
    with pytest.raises(SystemExit) as err:
        _import(["robomimic", str(path), "--name", "bad", "--obs-keys", ROBOMIMIC_ORDER])
    printed = capsys.readouterr().err
    assert err.value.code == 2 and str(path) in printed and "Traceback" not in printed
    assert re.search(message, printed), printed
    assert _nothing_cached(data_root, "bad")


def test_malformed_lerobot_and_minari_datasets_are_named(files, tmp_path, data_root, capsys):

    import pyarrow as pa
    import pyarrow.parquet as pq

    lr = tmp_path / "lr"
    shutil.copytree(files["lerobot"], lr)
    data_file = lr / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data_file)
    pq.write_table(table.drop(["action"]), data_file)
    with pytest.raises(imports.DataError, match=r"file-000.parquet: no column 'action'"):
        imports.import_path("lerobot", lr, "bad-lr")
    obs = table.column("observation.state").to_pylist()
    obs[5] = obs[5][:-1]  # one frame one value short
    pq.write_table(table.set_column(table.column_names.index("observation.state"), "observation.state",
                                    pa.array(obs, pa.list_(pa.float32()))), data_file)
    with pytest.raises(imports.DataError, match=r"'observation.state' has rows of length 27..28"):
        imports.import_path("lerobot", lr, "bad-lr")
    info = json.loads((lr / "meta" / "info.json").read_text())
    (lr / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(imports.DataError, match="codebase_version v2.1"):
        imports.import_path("lerobot", lr, "bad-lr")
    with pytest.raises(FileNotFoundError, match="not a Minari dataset directory"):
        imports.import_path("minari", tmp_path, "bad-mn")
    assert _nothing_cached(data_root, "bad-lr") and _nothing_cached(data_root, "bad-mn")


def test_an_existing_name_is_kept_unless_replaced(files, imported, capsys):
    with pytest.raises(SystemExit) as err:
        _import(["minari", str(files["minari"]), "--name", "rt-minari"])
    assert err.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _import(["minari", str(files["minari"]), "--name", "../escape"])
    assert "--name '../escape'" in capsys.readouterr().err


def test_fitted_action_bounds_cover_the_held_out_demos(data_root):
    """Fitted on the training split alone, a held-out demo's larger action would fall outside the
    bounds and stop training; the bounds cover every demo (observation statistics stay the training
    split's)."""
    from steerflow.data.imports import import_episodes, load_imported

    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(12, 3)), "actions": rng.uniform(-0.5, 0.5, size=(12, 2))}
                for _ in range(10)]
    episodes[-1]["actions"][4, 1] = 3.0  # the last demo is the held-out one
    import_episodes(episodes, "widerval", "robomimic", "synthetic", root=data_root)
    train, val, _, norm = load_imported("widerval", root=data_root)
    assert norm.action_high[1] == 3.0 and norm.action_high[0] <= 0.5
    assert np.abs(norm.normalize_action(val["actions"])).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(norm.obs_mean, np.concatenate([e["observations"][:-1] for e in episodes[:9]]).mean(0),
                               rtol=1e-5)
