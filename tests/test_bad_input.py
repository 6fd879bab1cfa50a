"""The bad-input catalogue: every way a user can hand the CLI something wrong (flags, config
values, data files, checkpoints, resumes, sweeps, reports, the filesystem) ends with the exit code
of its kind (2 bad input, 1 environment or failed run), a message that names the culprit, no
traceback, and nothing left behind (the directory tree is compared before and after).

Flag cases run in-process through `cli.main` (an exception other than SystemExit escaping it
would be a traceback and fails the test); the data and checkpoint cases damage copies of one tiny
dataset and one smoke run made once per module; the import cases write small files of random
demos with the project's own writers (`steerflow.demos.writers`) and damage them."""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from steerflow import cli
from steerflow.data import cache, ogbench_gen


def snapshot(root: Path) -> dict:
    """{relative path: sha256 of its content (None for a directory)} of everything under root but a
    dataset's stored labels (`steerflow.data.labels`: written by the load of a dataset that passed
    its checks, as when a run is then refused for having trained on other data)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "labels" not in p.relative_to(root).parts:
            out[str(p.relative_to(root))] = None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def error_lines(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if "steerflow: error" in line]


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_info.value.code, err


def assert_fails(argv, code, culprits, capsys, root: Path):
    before = snapshot(root)
    got, err = run_cli(argv, capsys)
    assert got == code, err
    for culprit in culprits:
        assert culprit in err, (culprit, err)
    assert snapshot(root) == before, "files were left behind or changed"
    return err


# ---------------------------------------------------------------------------------- flags and values

FLAG_CASES = {
    # name: (argv, exit code, what the message must name)
    "unknown domain": (["data", "generate", "cube-triple"], 2, ["'cube-triple'", "cube-single"]),
    "episodes 0": (["data", "generate", "cube-single", "--episodes", "0"], 2, ["--episodes 0"]),
    "workers 0": (["data", "generate", "cube-single", "--workers", "0"], 2, ["--workers 0"]),
    "old data flag form": (["data", "generate", "--domain", "cube-single"], 2, ["Missing", "domain"]),
    "steps 0": (["train", "--preset", "smoke", "--steps", "0"], 2, ["--steps 0"]),
    "steps negative": (["train", "--preset", "smoke", "--steps", "-20"], 2, ["--steps -20"]),
    "steps not a multiple": (["train", "--preset", "smoke", "--steps", "33"], 2, ["steps=33", "updates_per_call"]),
    "seeds empty": (["train", "--preset", "smoke", "--seeds", ""], 2, ["--seeds ''"]),
    "seeds empty item": (["train", "--preset", "smoke", "--seeds", "0,,1"], 2, ["--seeds '0,,1'", "empty item"]),
    "seeds repeated": (["train", "--preset", "smoke", "--seeds", "0,0"], 2, ["--seeds '0,0'", "repeated"]),
    "seeds not integers": (["train", "--preset", "smoke", "--seeds", "0,x"], 2, ["--seeds '0,x'"]),
    "unknown agent": (["train", "--preset", "smoke", "--agent", "sac"], 2, ["unknown agent", "'sac'"]),
    "unknown domain in task": (["train", "--preset", "smoke", "--task", "cube-triple-task1"], 2, ["unknown domain"]),
    "task number": (["train", "--preset", "smoke", "--task", "cube-single-task9"], 2, ["outside 1..5"]),
    "unknown preset": (["train", "--preset", "huge"], 2, ["unknown preset 'huge'"]),
    "unknown field": (["train", "--preset", "smoke", "--set", "critic.num_critic=3"], 2, ["has no field 'num_critic'"]),
    "wrong type": (["train", "--preset", "smoke", "--set", "critic.num_critics=two"], 2, ["critic.num_critics"]),
    "invalid value": (["train", "--preset", "smoke", "--set", "geometry=cube"], 2, ["geometry", "'cube'", "sphere"]),
    "invalid value other agent": (["train", "--preset", "smoke", "--agent", "bc-mf", "--set", "decoder=rk4"], 2,
                                  ["decoder", "rk4"]),
    "--set key of --train-set": (["train", "--preset", "smoke", "--set", "eval_episodes=3"], 2,
                                 ["--set eval_episodes=3", "--train-set eval_episodes=3"]),
    "--train-set key of --set": (["train", "--preset", "smoke", "--train-set", "alpha=3"], 2,
                                 ["--train-set alpha=3", "--set alpha=3"]),
    "--set without =": (["train", "--preset", "smoke", "--set", "alpha"], 2, ["--set 'alpha'", "KEY=VALUE"]),
    "train-config value": (["train", "--preset", "smoke", "--train-set", "eval_episodes=0"], 2, ["eval_episodes=0"]),
    "unknown flag": (["train", "--stesp", "10"], 2, ["--stesp"]),
    "--out is a file": (["train", "--preset", "smoke", "--out", "{tmp}/file.txt"], 2, ["file.txt", "must be a directory"]),
    "--out under a file": (["train", "--preset", "smoke", "--out", "{tmp}/file.txt/run"], 2, ["file.txt", "is a file"]),
    "eval episodes 0": (["eval", "{tmp}", "--episodes", "0"], 2, ["--episodes 0"]),
    "eval workers negative": (["eval", "{tmp}", "--workers", "-1"], 2, ["--workers -1"]),
    "eval not a run": (["eval", "{tmp}/nowhere"], 2, ["nowhere", "not a run directory"]),
    "sweep unknown agent": (["sweep", "--out", "{tmp}/sw", "--agents", "lps,sac", "--tasks", "cube-single-task2",
                             "--preset", "smoke"], 2, ["--agents 'sac'"]),
    "sweep empty grid": (["sweep", "--out", "{tmp}/sw", "--agents", "lps", "--tasks", "cube-single-task2",
                          "--grid", "alpha="], 2, ["--grid 'alpha='"]),
    "sweep jobs 0": (["sweep", "--out", "{tmp}/sw", "--agents", "lps", "--tasks", "cube-single-task2",
                      "--jobs", "0"], 2, ["--jobs 0"]),
    "sweep empty agent": (["sweep", "--out", "{tmp}/sw", "--agents", "lps,", "--tasks", "cube-single-task2"], 2,
                          ["--agents 'lps,'"]),
    "sweep without manifest": (["sweep", "--out", "{tmp}/sw", "--dry-run"], 2, ["manifest.json"]),
    "report missing path": (["report", "{tmp}/nowhere", "--out", "{tmp}/rep"], 2, ["nowhere does not exist"]),
    "report empty tree": (["report", "{tmp}/empty", "--out", "{tmp}/rep"], 2, ["contains no run directory"]),
    "report out is a file": (["report", "{tmp}", "--out", "{tmp}/file.txt"], 2, ["file.txt", "must be a directory"]),
    "toy steps 0": (["toy", "--out", "{tmp}/toy", "--steps", "0"], 2, ["--steps 0"]),
    # values by meaning (steerflow.config.RULES), agent and training configs alike
    "learning rate negative": (["train", "--preset", "smoke", "--set", "learning_rate=-1"], 2,
                               ["--set learning_rate=-1.0", "a positive number"]),
    "discount above 1": (["train", "--preset", "smoke", "--set", "critic.discount=1.5"], 2,
                         ["--set critic.discount=1.5", "(0, 1]"]),
    "value not finite": (["train", "--preset", "smoke", "--set", "alpha=nan"], 2, ["--set alpha=nan", "finite"]),
    "share above 1": (["train", "--preset", "smoke", "--set", "base.equal_fraction=2"], 2,
                      ["--set base.equal_fraction=2.0", "[0, 1]"]),
    "no critics": (["train", "--preset", "smoke", "--set", "critic.num_critics=0"], 2,
                   ["--set critic.num_critics=0", "positive integer"]),
    "layer of size 0": (["train", "--preset", "smoke", "--set", "actor_hidden=32,0"], 2,
                        ["--set actor_hidden=32,0", "layer sizes"]),
    "train-set not finite": (["train", "--preset", "smoke", "--train-set", "updates_per_env_step=inf"], 2,
                             ["--train-set updates_per_env_step=inf", "finite"]),
    "online ratio without online steps": (["train", "--preset", "smoke", "--online-ratio", "0.5"], 2,
                                          ["--online-ratio 0.5", "does nothing without --online-steps"]),
    "video episodes without video_every": (["train", "--preset", "smoke", "--train-set", "video_episodes=3"], 2,
                                           ["video_episodes 3", "does nothing without --train-set video_every"]),
}


@pytest.mark.parametrize("name", sorted(FLAG_CASES))
def test_bad_flags_and_values_fail_before_any_work(name, tmp_path, monkeypatch, capsys):
    argv, code, culprits = FLAG_CASES[name]
    (tmp_path / "file.txt").write_text("not a directory")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)  # the default --out (runs/...) would land here
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))  # no dataset: nothing may generate one
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_fails(argv, code, culprits, capsys, tmp_path)


# ---------------------------------------------------------------------------------- data files

TASK = ["--task", "cube-single-task2", "--preset", "smoke"]  # smoke: 3+1 episodes of 101 steps


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return ogbench_gen.generate_dataset("cube-single", episodes=3, seed=0, root=root, show_progress=False,
                                        episode_steps=101)


def _rewrite(path: Path, meta_too: bool = True, **changes):
    """Rewrite one npz of a dataset directory; with `meta_too` its sha256/size in meta.json follow,
    so the damage passes the fingerprint check and must be caught by what comes after it."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v(arrays[k]) if callable(v) else v
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    if meta_too:
        meta = json.loads((path.parent / "meta.json").read_text())
        meta["files"][path.name] = {"sha256": cache.fingerprint(path), "size": path.stat().st_size}
        (path.parent / "meta.json").write_text(json.dumps(meta))


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


DATA_CASES = {
    "truncated npz": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), ["truncated"]),
    "garbage npz": (lambda p: p.write_bytes(b"this is not a zip file" * 100), ["corrupt"]),
    "empty file": (lambda p: p.write_bytes(b""), ["corrupt"]),
    "missing key": (lambda p: _rewrite(p, qpos=None), ["missing required key 'qpos'"]),
    "wrong shape": (lambda p: _rewrite(p, observations=lambda o: o[:, :27]), ["'observations'", "(N, 28)"]),
    "fingerprint mismatch": (lambda p: _rewrite(p, meta_too=False, actions=lambda a: a * 0.5), ["fingerprint"]),
    "nan observations": (lambda p: _rewrite(p, observations=lambda o: _with(o, (7, 3), np.nan)),
                         ["'observations'", "1 non-finite", "NaN", "row 7 of the file (episode 0, step 7)"]),
    "inf actions": (lambda p: _rewrite(p, actions=lambda a: _with(a, slice(205, 208), np.inf)),
                    ["'actions'", "15 non-finite", "inf", "3 row(s)", "row 205 of the file (episode 2, step 3)"]),
    "nan in a last observation": (lambda p: _rewrite(p, observations=lambda o: _with(o, 100, np.nan)),
                                  ["'observations'", "row 100 of the file (episode 0, step 100)"]),
    "meta.json missing": (lambda p: (p.parent / "meta.json").unlink(), ["meta.json", "is missing"]),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_damaged_datasets_are_rejected_at_load_naming_file_and_key(name, tiny_dataset, tmp_path, monkeypatch,
                                                                    capsys):
    damage, culprits = DATA_CASES[name]
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data / tiny_dataset.name)
    train_file = data / tiny_dataset.name / "cube-single-play-v0.npz"
    damage(train_file)
    monkeypatch.setenv("STEERFLOW_DATA", str(data))
    err = assert_fails(["train", *TASK, "--out", tmp_path / "run"], 2, culprits, capsys, tmp_path)
    assert str(data / tiny_dataset.name) in err  # the file (or its directory) is named
    assert not (data / tiny_dataset.name / "labels").exists()  # no labels are stored for a damaged dataset


def test_non_finite_rewards_are_named(tmp_path):
    from steerflow.data.tasks import check_finite

    arrays = {"observations": np.zeros((200, 28), np.float32), "actions": np.zeros((200, 5), np.float32),
              "rewards": _with(np.zeros(200, np.float32), [150, 199], np.nan)}
    with pytest.raises(ValueError) as err:
        check_finite(arrays, tmp_path / "x.npz", episode_steps=101)
    message = str(err.value)
    assert "'rewards'" in message and "2 non-finite" in message and "episode 1, step 50" in message


def test_data_info_and_generate_verify_the_sha256(tiny_dataset, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    copy = data / tiny_dataset.name
    shutil.copytree(tiny_dataset, copy)
    f = copy / "cube-single-play-v0-val.npz"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(raw))
    monkeypatch.setenv("STEERFLOW_DATA", str(data))
    capsys.readouterr()
    cli.main(["data", "info"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["valid"] is False and "sha256" in row["problem"] and f.name in row["problem"]
    path = ogbench_gen.generate_dataset("cube-single", episodes=3, seed=0, root=data, show_progress=False,
                                        episode_steps=101)
    out = capsys.readouterr().out
    assert "not usable" in out and "sha256" in out and "regenerating" in out
    assert cache.check_dir(path) is None  # regenerated, and verified


# ---------------------------------------------------------------------------------- files to import

def _demos(n: int = 2, steps: int = 30, action_dim: int = 5) -> list[dict]:
    """Random demos in the episode layout (28-D observations: the writers' cube-single keys)."""
    rng = np.random.default_rng(0)
    return [{"observations": rng.normal(size=(steps, 28)).astype(np.float32),
             "next_observations": rng.normal(size=(steps, 28)).astype(np.float32),
             "actions": rng.uniform(-1, 1, (steps, action_dim)).astype(np.float32)} for _ in range(n)]


def _robomimic(tmp: Path, edit, **kwargs) -> Path:
    import h5py

    from steerflow.demos import writers

    path = writers.write_robomimic(tmp / "demos.hdf5", _demos(), **kwargs)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _frames(dtype, shape):
    """Camera frames of `dtype` and per-frame `shape` in every demo's obs and next_obs."""
    return lambda f: [f[f"data/{d}/{g}"].create_dataset("agentview_image", data=np.zeros((30, *shape), dtype))
                      for d in f["data"] for g in ("obs", "next_obs")]


def _narrow_next_obs(f):
    narrow = f["data/demo_1/next_obs/object"][:, :8]
    del f["data/demo_1/next_obs/object"]
    f["data/demo_1/next_obs"].create_dataset("object", data=narrow)


def _lerobot(tmp: Path, edit_table=None, edit_info=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steerflow.demos import writers

    root = writers.write_lerobot(tmp / "lerobot", _demos(action_dim=4))
    data_file = root / "data" / "chunk-000" / "file-000.parquet"
    if edit_table:
        pq.write_table(edit_table(pq.read_table(data_file), pa), data_file)
    if edit_info:
        info_path = root / "meta" / "info.json"
        info_path.write_text(json.dumps(edit_info(json.loads(info_path.read_text()))))
    return root


def _scalar_action(table, pa):
    first = [row[0] for row in table.column("action").to_pylist()]  # one float per frame, info.json says [4]
    return table.set_column(table.column_names.index("action"), "action", pa.array(first, pa.float32()))


KEYS = "robot0_proprio,object,agentview_image"
IMPORT_CASES = {
    # name: (make the file in a directory, extra flags, what the message must name)
    "lerobot scalar action for shape [4]": (lambda d: _lerobot(d, edit_table=_scalar_action), [],
                                            ["file-000.parquet", "column 'action'", "one value per row", "[4]"]),
    "lerobot info.json a list": (lambda d: _lerobot(d, edit_info=lambda info: [info]), [],
                                 ["meta/info.json", "expected a JSON object", "got a list"]),
    "lerobot feature not an object": (lambda d: _lerobot(d, edit_info=lambda i: {**i, "features": {
                                          **i["features"], "action": "float32"}}), [],
                                      ["meta/info.json", "feature 'action'", "shape"]),
    "robomimic float frames": (lambda d: _robomimic(d, _frames(np.float32, (8, 8, 3))), ["--obs-keys", KEYS],
                               ["data/demo_0/obs/agentview_image", "float32", "(30, 8, 8, 3)", "must be uint8"]),
    "robomimic frames without channel": (lambda d: _robomimic(d, _frames(np.uint8, (8, 8))), ["--obs-keys", KEYS],
                                         ["data/demo_0/obs/agentview_image", "(30, 8, 8)", "(T, H, W, 1)"]),
    "robomimic narrow next_obs": (lambda d: _robomimic(d, _narrow_next_obs), [],
                                  ["data/demo_1/next_obs/object", "(30, 8)", "data/demo_1/obs/object", "(30, 9)"]),
    "robomimic nested obs group": (lambda d: _robomimic(d, lambda f: f["data/demo_0/obs"].create_group("arm")
                                                        .create_dataset("joints", data=np.zeros((30, 7)))), [],
                                   ["data/demo_0/obs/arm is a group", "joints", "--obs-keys", "arm/joints"]),
    "robomimic obs an array": (lambda d: _robomimic(d, lambda f: (f["data/demo_1"].__delitem__("obs"),
                                                                   f["data/demo_1"].create_dataset("obs", data=[1.0]))),
                               [], ["data/demo_1/obs is an array", "expected a group"]),
}


@pytest.mark.parametrize("name", sorted(IMPORT_CASES))
def test_imports_check_every_array_against_its_declared_or_inferred_shape(name, tmp_path, monkeypatch, capsys):
    make, extra, culprits = IMPORT_CASES[name]
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    fmt = name.split()[0]
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))
    err = assert_fails(["data", "import", fmt, path, "--name", "bad", *extra], 2, culprits, capsys, tmp_path)
    assert str(src) in err  # the file (or its directory) is named


def test_a_next_observation_narrower_than_its_observation_is_refused(tmp_path):
    from steerflow.data import imports

    demos = _demos()
    demos[1]["next_observations"] = demos[1]["next_observations"][:, :27]
    with pytest.raises(imports.DataError, match=r"demos.x: demo 1 key 'next_observations' has shape \(30, 27\), "
                                                r"'observations' \(30, 28\)"):
        imports.import_episodes(demos, "bad", "minari", "demos.x", root=tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- checkpoints and resume

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A smoke run directory as `train` leaves it, without training: config.json as written, and a
    real checkpoint of the initial states at step 40 (the resume refusals come before it is read)."""
    import dataclasses

    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.config import to_dict
    from steerflow.runinfo import atomic_write_json
    from steerflow.train import RunSpec, resolve, save_checkpoint

    out = tmp_path_factory.mktemp("run") / "lps"
    run = RunSpec(agent="lps", task="cube-single-task2", seeds=[0], preset="smoke")
    agent, config, tc = resolve(run)
    atomic_write_json(out / "config.json", {"run": dataclasses.asdict(run), "agent_config": to_dict(config),
                                            "train_config": to_dict(tc)})
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    states = jax.vmap(lambda k: agent.init(k, EnvSpec(28, 5, tc.horizon), config))(keys)
    save_checkpoint(out, states, keys, 40)
    return out


RESUME_CASES = {
    "another agent": (["--agent", "bc-mf"], ["--agent: stored lps, now bc-mf"]),
    "another task": (["--task", "cube-single-task3"], ["--task: stored cube-single-task2, now cube-single-task3"]),
    "other seeds": (["--seeds", "0,1"], ["--seeds: stored 0, now 0,1"]),
    "another preset": (["--preset", "cpu"], ["--preset: stored smoke, now cpu"]),
    "another --set": (["--set", "alpha=3"], ["--set alpha: stored (not set), now 3"]),
    "another --train-set": (["--train-set", "batch_size=8"], ["--train-set batch_size: stored (not set), now 8"]),
    "fewer --steps": (["--steps", "20"], ["shorten", "only raising --steps"]),
    "truncated checkpoint": ([], ["latest.msgpack", "cannot read checkpoint", "damaged"]),
    "no --resume": ([], ["already holds a run", "--resume"]),
}


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_resume_refuses_other_settings_and_damaged_checkpoints(name, smoke_run, tiny_dataset, tmp_path,
                                                               monkeypatch, capsys):
    extra, culprits = RESUME_CASES[name]
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    if name == "truncated checkpoint":
        ckpt = run / "checkpoints" / "latest.msgpack"
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    monkeypatch.setenv("STEERFLOW_DATA", str(tiny_dataset.parent))
    base = ["train", "--agent", "lps", *TASK, "--out", run]
    flags = {}  # later flags win in tyro: replace rather than append the ones a case changes
    for i in range(0, len(extra), 2):
        flags[extra[i]] = extra[i + 1]
    argv = []
    for i, a in enumerate(base):
        if i and base[i - 1] in flags:
            argv.append(flags.pop(base[i - 1]))
        else:
            argv.append(a)
    argv += [x for kv in flags.items() for x in kv] + ([] if name == "no --resume" else ["--resume"])
    assert_fails(argv, 2, culprits, capsys, tmp_path)


@pytest.fixture
def changed_data(smoke_run, tiny_dataset, tmp_path, monkeypatch) -> tuple[Path, str, str]:
    """(run directory, the training file's sha256 it trained on, the sha256 now): a copy of the
    smoke run whose run_info.json records the tiny dataset, whose actions were then halved (with
    the sha256 in meta.json updated, so only the run's own record can tell)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data / tiny_dataset.name)
    train_file = data / tiny_dataset.name / "cube-single-play-v0.npz"
    trained_on = cache.fingerprint(train_file)
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "run_info.json").write_text(json.dumps({"dataset": {"dataset_dir": str(train_file.parent),
                                                               "fingerprint": trained_on}}))
    _rewrite(train_file, actions=lambda a: a * 0.5)
    monkeypatch.setenv("STEERFLOW_DATA", str(data))
    return run, trained_on, cache.fingerprint(train_file)


def test_resume_refuses_changed_data_naming_both_fingerprints(changed_data, tmp_path, capsys):
    run, trained_on, now = changed_data
    argv = ["train", "--agent", "lps", *TASK, "--out", run, "--steps", "80", "--resume"]
    assert_fails(argv, 2, ["--resume", str(run), "other data", trained_on, now], capsys, tmp_path)


def test_from_refuses_changed_data_naming_both_fingerprints(changed_data, tmp_path, capsys):
    run, trained_on, now = changed_data
    argv = ["train", "--agent", "lps", *TASK, "--from", run, "--online-steps", "20", "--out", tmp_path / "online"]
    assert_fails(argv, 2, ["--from", str(run), "other data", trained_on, now], capsys, tmp_path)


def test_the_content_fingerprint_ignores_how_the_files_were_written(tmp_path):
    from steerflow.data import source

    train = {"actions": np.ones((4, 2), np.float32), "observations": np.zeros((4, 3), np.float32)}
    info = {"dataset_dir": "d", "fingerprint": "a" * 64, "content_sha256": source.content_fingerprint(train, None)}
    (tmp_path / "run_info.json").write_text(json.dumps({"dataset": {**info, "fingerprint": "b" * 64}}))
    source.check_same_dataset(tmp_path, info, "--resume")  # the same arrays in a rewritten file: accepted
    halved = source.content_fingerprint({**train, "actions": train["actions"] * 0.5}, None)
    with pytest.raises(ValueError, match=f"dataset content sha256: stored {info['content_sha256']} .*now {halved}"):
        source.check_same_dataset(tmp_path, {**info, "content_sha256": halved}, "--resume")


# ---------------------------------------------------------------------------------- the filesystem

@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A directory this process cannot create files in (chmod, or /sys when running as root)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    probe = Path("/sys/steerflow-test-probe")
    try:
        probe.mkdir()
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
            yield Path("/sys")
            return
    else:
        probe.rmdir()
    pytest.skip("no unwritable directory available to this (root) process")


def test_unwritable_output_directory(unwritable, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(tiny_dataset.parent))
    out = unwritable / "steerflow-run"
    err = assert_fails(["train", "--agent", "bc-mf", *TASK, "--out", out], 1, [str(out), "cannot write"],
                       capsys, tmp_path)
    assert len(error_lines(err)) == 1 and not out.exists()


def test_unwritable_data_directory(unwritable, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(unwritable / "steerflow-data"))
    err = assert_fails(["data", "generate", "cube-single", "--episodes", "1"], 1,
                       [str(unwritable / "steerflow-data"), "cannot write"], capsys, tmp_path)
    assert len(error_lines(err)) == 1


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_data_generation_leaves_no_temporary_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(ogbench_gen.np, "savez_compressed", _enospc)
    got, err = run_cli(["data", "generate", "cube-single", "--episodes", "1"], capsys)
    assert got == 1 and "No space left on device" in err and "cube-single-play-v0.npz" in err
    assert not list((tmp_path / "data").iterdir())  # neither the temporary nor a partial dataset directory


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tiny_dataset, tmp_path, monkeypatch, capsys):
    from steerflow import runinfo, train

    monkeypatch.setenv("STEERFLOW_DATA", str(tiny_dataset.parent))
    real_fsync, calls = os.fsync, []

    def fsync_fails_on_the_second_checkpoint(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "latest.msgpack" in name:
            calls.append(name)
            if len(calls) == 2:
                _enospc()
        real_fsync(fd)

    monkeypatch.setattr(runinfo.os, "fsync", fsync_fails_on_the_second_checkpoint)
    out = tmp_path / "run"
    got, err = run_cli(["train", "--agent", "bc-mf", *TASK, "--out", out], capsys)
    assert got == 1 and "No space left on device" in err and str(out / "checkpoints" / "latest.msgpack") in err
    assert len(error_lines(err)) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.msgpack"]  # no temporary file
    run = train.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke")
    agent, config, tc = train.resolve(run)
    import jax

    from steerflow.agents.common import EnvSpec

    states = jax.vmap(lambda k: agent.init(k, EnvSpec(28, 5, 5), config))(jax.random.split(jax.random.PRNGKey(0), 1))
    _, _, step = train.load_checkpoint(out, states, jax.random.split(jax.random.PRNGKey(0), 1))
    assert step == 20  # the step-20 checkpoint survived the failed step-40 write


# ---------------------------------------------------------------------------------- the policy API

def _counting_policy():
    """A `policy.Policy` whose chunk (B, H, A) holds obs[b, 0] + 100·query + h at row h."""
    from steerflow.policy import Policy

    class Counting(Policy):
        calls = 0

        def _chunks(self, obs, noise):
            self.calls += 1
            h = np.arange(self.horizon * self.action_dim) // self.action_dim
            return obs[:, :1] + 100 * self.calls + h[None]

    return Counting({"agent": "test", "task": "none", "obs_dim": 3, "action_dim": 2, "horizon": 4, "noise": None})


def test_a_stepper_steps_a_batch_of_environments_in_lockstep():
    policy = _counting_policy()
    stepper = policy.stepper()
    obs = np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 3), np.float32)  # env b observes b
    actions = np.stack([stepper.step(obs) for _ in range(2 * policy.horizon)])
    assert actions.shape == (8, 3, 2)  # one (B, A) action per step, not env 0's chunk
    assert stepper.queries == 2  # one query for the batch every H steps, not every B
    for t in range(8):
        assert (actions[t] == np.arange(3)[:, None] + 100 * (1 + t // 4) + t % 4).all()
    stepper.step(obs)  # a third chunk begins
    with pytest.raises(ValueError, match=r"a batch of 2 in the middle of a chunk for 3; call reset\(\)"):
        stepper.step(obs[:2])
    stepper.reset()
    assert stepper.step(obs[:2]).shape == (2, 2)  # after a reset, another batch size
    stepper.reset()
    assert stepper.step(obs[0]).shape == (2,)  # one observation: one action


@pytest.mark.slow
def test_a_one_demo_dataset_is_scored_on_its_training_demo_and_says_so(tmp_path, monkeypatch, capsys):
    """No demo is held out of a dataset of one: the offline MSE is the training fit, and every
    place that shows it (the import, each evaluation, the final line and records) says so."""
    from steerflow.demos import writers

    path = writers.write_robomimic(tmp_path / "one.hdf5", _demos(n=1))
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))
    capsys.readouterr()
    cli.main(["data", "import", "robomimic", str(path), "--name", "one"])
    assert "one demo: none is held out" in capsys.readouterr().out
    out = tmp_path / "run"
    cli.main(["train", "--agent", "bc-mf", "--dataset", "one", "--reward", "sparse-success", "--preset", "smoke",
              "--steps", "10", "--out", str(out)])
    printed = capsys.readouterr()
    assert "holds no held-out demo" in printed.out and "held-out action MSE" not in printed.out + printed.err
    assert "final action MSE on the training demo (none held out)" in printed.out
    final = json.loads((out / "final.json").read_text())
    assert final["scored_on"] == "train"
    assert json.loads((out / "evals" / "step_00000010.json").read_text())["scored_on"] == "train"


# ---------------------------------------------------------------------------------- concurrency and fault
# One writer per run directory, dataset cache entry and export target (steerflow.runlock); temporary
# files unique to their writer; a full disk named; leftovers of killed writers removed by the next call.

def _steerflow(*args) -> list[str]:
    return [sys.executable, "-m", "steerflow.cli", *map(str, args)]


def run_ok(argv, capsys) -> str:
    """stderr of a command that succeeds in-process."""
    capsys.readouterr()
    cli.main([str(a) for a in argv])
    return capsys.readouterr().err


@contextlib.contextmanager
def holding(lock_file: Path):
    """Hold `lock_file` as a writer does: flock (failing at once when it is held), this process named in it."""
    with open(lock_file, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(json.dumps({"pid": os.getpid(), "command": "steerflow (the test)"}))
        f.flush()
        yield


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftovers(root: Path) -> list[str]:
    """Scratch directories, half-written files and lock files under root (none may outlive its command)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".tmp-")
                  or p.name.endswith((".lock", ".tmp")))


def _random_demos(path: Path, demos: int, steps: int) -> Path:
    """A robomimic file of random demos (cube-single's 28 + 5 dimensions)."""
    from steerflow.demos import writers

    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(steps, 28)).astype(np.float32),
                 "actions": rng.uniform(-1, 1, size=(steps, 5)).astype(np.float32),
                 "rewards": np.zeros(steps, np.float32), "dones": np.zeros(steps, np.float32)} for _ in range(demos)]
    return writers.write_robomimic(path, episodes)


@pytest.fixture(scope="module")
def demos_file(tmp_path_factory) -> Path:
    return _random_demos(tmp_path_factory.mktemp("demos") / "demos.hdf5", 12, 200)


def test_a_train_into_a_run_directory_another_process_owns_is_refused_naming_it(tiny_dataset, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(tiny_dataset.parent))
    out = tmp_path / "run"
    out.mkdir()
    with holding(out / ".lock"):
        err = assert_fails(["train", "--agent", "bc-mf", *TASK, "--out", out], 2,
                           [f"process {os.getpid()} (steerflow (the test))", f"run directory {out}", "another --out"],
                           capsys, tmp_path)
    assert len(error_lines(err)) == 1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_second_train_into_a_running_runs_directory_is_refused_naming_the_first(tiny_dataset, tmp_path,
                                                                                 monkeypatch, capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(tiny_dataset.parent))
    out = tmp_path / "run"
    argv = ["train", "--agent", "bc-mf", *TASK, "--out", out]
    first = subprocess.Popen(_steerflow(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while first.poll() is None and str(first.pid) not in _read(out / ".lock"):
            time.sleep(0.05)
        assert first.poll() is None, "the first train finished without ever holding its run directory"
        got, err = run_cli(argv, capsys)
        assert got == 2, err
        assert len(error_lines(err)) == 1
        assert f"process {first.pid} (steerflow train --agent bc-mf" in err and str(out) in err
    finally:
        first.kill()
        first.wait()
    holder = json.loads((out / ".lock").read_text())  # stale: names a dead process, and nobody holds it
    assert holder["pid"] == first.pid and holder["command"].startswith("steerflow train")
    with holding(out / ".lock"):  # taken over at once
        pass


@pytest.mark.parametrize("target", ["data import", "export"])
def test_a_cache_entry_or_export_target_being_written_is_refused_naming_its_writer(target, demos_file, smoke_run,
                                                                                  tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))
    if target == "data import":
        (tmp_path / "data").mkdir()
        written, argv = tmp_path / "data" / "demos", ["data", "import", "robomimic", demos_file, "--name", "demos"]
    else:
        written, argv = tmp_path / "policy", ["export", smoke_run, "--format", "stablehlo", "--out", tmp_path / "policy"]
    with holding(written.parent / f".{written.name}.lock"):
        err = assert_fails(argv, 2, [f"process {os.getpid()}", str(written), "is being written"], capsys, tmp_path)
    assert len(error_lines(err)) == 1
    (written.parent / f".{written.name}.lock").unlink()  # the test's own
    assert _leftovers(tmp_path) == []


def test_a_generation_waits_for_the_process_generating_the_same_dataset(tmp_path, capsys):
    """Generating a dataset another process is generating waits for it (a sweep's units share one)."""
    import threading

    root = tmp_path / "data"
    root.mkdir()
    key = ogbench_gen.cache_key("cube-single", 1, 0, episode_steps=21)
    held, release = threading.Event(), threading.Event()

    def other_writer():
        with holding(root / f".{key}.lock"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    path = ogbench_gen.generate_dataset("cube-single", episodes=1, seed=0, root=root, show_progress=False,
                                        episode_steps=21)
    thread.join()
    assert f"waiting for process {os.getpid()}" in capsys.readouterr().out
    assert cache.check_dir(path) is None


def test_export_keeps_a_users_directory_named_like_its_temporary_one(smoke_run, tmp_path, capsys):
    mine = tmp_path / "policy.tmp"  # the old export removed `<out>.tmp` and wrote its files there
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    run_ok(["export", smoke_run, "--format", "stablehlo", "--out", tmp_path / "policy"], capsys)
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "policy.tmp"]  # no temporary left


def _partial_write_then_enospc(self, data):
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_export_names_the_file_and_leaves_nothing(smoke_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "policy"
    monkeypatch.setattr(Path, "write_bytes", _partial_write_then_enospc)
    err = assert_fails(["export", smoke_run, "--format", "stablehlo", "--out", out], 1,
                       ["No space left on device", str(out / "policy.stablehlo")], capsys, tmp_path)
    assert len(error_lines(err)) == 1 and "[Errno" not in err


def test_disk_full_during_data_import_names_the_dataset_and_leaves_nothing(demos_file, tmp_path, monkeypatch,
                                                                         capsys):
    from steerflow.data import imports

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("STEERFLOW_DATA", str(data))
    monkeypatch.setattr(imports.np, "savez", _enospc)
    err = assert_fails(["data", "import", "robomimic", demos_file, "--name", "demos"], 1,
                       ["No space left on device", str(data / "demos")], capsys, tmp_path)
    assert len(error_lines(err)) == 1 and "[Errno" not in err


@pytest.mark.parametrize("leftover", [".tmp-demos-{pid}", ".tmp-other-{pid}.k3j2h1g0"])
def test_leftovers_of_a_killed_import_are_removed_by_the_next_one_saying_so(leftover, demos_file, tmp_path,
                                                                          monkeypatch, capsys):
    """A SIGKILLed import leaves its temporary directory (named with its pid) and its lock file."""
    data = tmp_path / "data"
    stale = data / leftover.format(pid=_dead_pid())
    stale.mkdir(parents=True)
    (stale / "train.npz").write_bytes(b"\0" * 2**20)
    (data / ".other.lock").write_text(json.dumps({"pid": _dead_pid(), "command": "steerflow data import ..."}))
    monkeypatch.setenv("STEERFLOW_DATA", str(data))
    err = run_ok(["data", "import", "robomimic", demos_file, "--name", "demos"], capsys)
    (line,) = [x for x in err.splitlines() if "leftover" in x]
    assert "removed 2 leftover(s) of killed processes" in line and stale.name in line and "1.0 MB" in line
    assert sorted(p.name for p in data.iterdir()) == ["demos"]


def test_half_written_files_of_a_killed_run_are_removed_by_the_next_train(smoke_run, tmp_path, monkeypatch,
                                                                            capsys):
    """A run killed inside an atomic write leaves `.NAME.XXXX.tmp` beside the file (here: the checkpoint)."""
    from steerflow.train import loop

    out = tmp_path / "run"
    shutil.copytree(smoke_run, out)
    (out / "checkpoints" / ".latest.msgpack.k3j2h1g0.tmp").write_bytes(b"\0" * 2**20)
    (out / ".run_info.json.a8x0q2zz.tmp").write_text("{")
    monkeypatch.setattr(loop, "_train", lambda *args: {})  # what comes after the cleanup is not at stake
    capsys.readouterr()
    loop.train(loop.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0]), out, resume=True)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "leftover" in x]
    assert f"removed 2 leftover(s) of killed processes in {out} (1.0 MB)" in line
    assert "checkpoints/.latest.msgpack.k3j2h1g0.tmp" in line and _leftovers(out) == []


# The kill loop: each command SIGKILLed at seeded random points, each kill followed by the next call
# of the same command, then one call to the end. Nothing may be lost (a dataset or artifact is absent
# or complete, a run's checkpoint never goes back) and no leftover may outlive the last call.
# STEERFLOW_KILLS sets the kills per command (the check: STEERFLOW_KILLS=20); the defaults
# keep the fast loops (data import, data generate) near 10 s on one core; export and train, whose one
# complete call alone takes 10-20 s there (more on a busy core), are marked slow (about 25 s each).


def kills(default: int) -> int:
    return int(os.environ.get("STEERFLOW_KILLS", default))


def kill_loop(argv, env, kills: int, seed: int, window_s: float, logs: Path, check,
              watch: Path | None = None) -> tuple[int, int, str]:
    """Start `argv` `kills` times, SIGKILL each (with its process group) at a uniform random point of
    its first `window_s` seconds and call `check()` after each; a call that ends sooner is not killed,
    and the window shrinks to 0.9 of its duration. With `watch`, every second call is killed instead
    within 50 ms of a temporary directory appearing there (while it writes). Then one call runs to the
    end, and has to say it removed what the killed ones left. Returns (calls killed, temporary
    directories the killed calls left, stderr of the last call)."""
    import random

    rng = random.Random(seed)
    killed, left = 0, set()
    for i in range(kills):
        with open(logs / f"call{i}.log", "w") as log:
            start = time.monotonic()
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
            try:
                if watch is not None and i % 2:
                    while proc.poll() is None and not list(watch.glob(".tmp-*")):
                        time.sleep(0.005)
                    proc.wait(timeout=rng.uniform(0.0, 0.05))
                else:
                    proc.wait(timeout=rng.uniform(0.0, window_s))
                    window_s = 0.9 * (time.monotonic() - start)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed += 1
        assert proc.returncode in (0, -signal.SIGKILL), (logs / f"call{i}.log").read_text()[-2000:]
        left |= set(watch.glob(".tmp-*")) if watch is not None else set()
        check()
    leftovers = watch is not None and list(watch.glob(".tmp-*"))
    last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-2000:]
    assert not leftovers or "leftover(s) of killed processes" in last.stderr, last.stderr[-2000:]
    check()
    return killed, len(left), last.stderr


def _env(**extra) -> dict:
    return {**os.environ, "MUJOCO_GL": "egl", **{k: str(v) for k, v in extra.items()}}


def _complete_or_absent(entry: Path) -> None:
    assert not entry.exists() or cache.check_dir(entry) is None, f"{entry} is partial"


def _arrays(npz: Path) -> dict:
    with np.load(npz) as z:
        return {k: z[k] for k in z.files}


def _same_arrays(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_kill_loop_data_import(tmp_path):
    from steerflow.data import imports

    data, logs = tmp_path / "data", tmp_path / "logs"
    logs.mkdir()
    demos_file = _random_demos(tmp_path / "demos.hdf5", 50, 1000)  # about 25 MB cached: writing takes a while
    argv = _steerflow("data", "import", "robomimic", demos_file, "--name", "demos", "--replace")
    n = kills(3)
    killed, left, err = kill_loop(argv, _env(STEERFLOW_DATA=data), n, 0, 2.0, logs,
                                  lambda: _complete_or_absent(data / "demos"), watch=data)
    reference = imports.import_path("robomimic", demos_file, "demos", root=tmp_path / "reference")
    for split in ("train.npz", "val.npz"):
        _same_arrays(data / "demos" / split, reference / split)
    assert _leftovers(data) == [], err
    print(f"data import: {killed} of {n} calls killed, {left} temporary directories left and removed")


GENERATE = ("from steerflow.data.ogbench_gen import generate_dataset; "  # the CLI's, with shorter episodes
            "generate_dataset('cube-single', episodes=2, seed=0, show_progress=False, episode_steps=31)")


def test_kill_loop_data_generate(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    logs.mkdir()
    key = ogbench_gen.cache_key("cube-single", 2, 0, episode_steps=31)
    n = kills(2)
    killed, left, err = kill_loop([sys.executable, "-c", GENERATE], _env(STEERFLOW_DATA=data), n, 1, 6.0, logs,
                                  lambda: _complete_or_absent(data / key), watch=data)
    reference = ogbench_gen.generate_dataset("cube-single", episodes=2, seed=0, root=tmp_path / "reference",
                                             show_progress=False, episode_steps=31)
    assert cache.read_meta(data / key)["files"] == cache.read_meta(reference)["files"]  # bitwise
    assert _leftovers(data) == [], err
    print(f"data generate: {killed} of {n} calls killed, {left} temporary directories left and removed")


@pytest.mark.slow
def test_kill_loop_export(smoke_run, tmp_path):
    from steerflow.policy import load

    out, logs = tmp_path / "exports" / "policy", tmp_path / "logs"
    logs.mkdir()

    def complete_or_absent():
        assert not out.exists() or sorted(p.name for p in out.iterdir()) == ["artifact.json", "policy.stablehlo"]

    argv = _steerflow("export", smoke_run, "--format", "stablehlo", "--out", out)
    n = kills(2)
    killed, left, err = kill_loop(argv, _env(), n, 2, 8.0, logs, complete_or_absent, watch=out.parent)
    policy = load(out)
    assert policy.act(np.zeros(28, np.float32)).shape[-1] == 5
    assert _leftovers(out.parent) == [], err
    print(f"export: {killed} of {n} calls killed, {left} temporary directories left and removed")


@pytest.mark.slow
def test_kill_loop_train(tiny_dataset, tmp_path):
    """Resumed after every kill: the checkpoint step never goes back, and the run ends complete."""
    from flax import serialization

    out, logs, steps = tmp_path / "run", tmp_path / "logs", []
    logs.mkdir()

    def checkpoint_never_goes_back():
        ckpt = out / "checkpoints" / "latest.msgpack"
        steps.append(int(serialization.msgpack_restore(ckpt.read_bytes())["step"]) if ckpt.exists() else 0)
        assert steps == sorted(steps), steps

    argv = _steerflow("train", "--agent", "bc-mf", *TASK, "--out", out, "--resume")
    n = kills(1)
    killed, _, err = kill_loop(argv, _env(STEERFLOW_DATA=tiny_dataset.parent), n, 3, 15.0, logs,
                               checkpoint_never_goes_back)
    assert json.loads((out / "final.json").read_text())["steps"] == 40 and steps[-1] == 40
    assert _leftovers(out) == [], err
    print(f"train: {killed} of {n} calls killed, checkpoint steps {steps}")
