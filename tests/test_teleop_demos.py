"""Teleoperation-like demos in a real environment no one here wrote (Gymnasium-Robotics'
FetchPickAndPlace) and on OGBench's cube-single oracle: the env builds under mujoco 4 (and only with
the shim), clean scripted demos succeed and are the operator's own commands, each artifact alone
leaves its signature in the actions and none leaves none, demos are a function of the seed, the
HDF5 file imports like a user's, and the CLI refuses bad flags before any work."""

import functools
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest

from steerflow import cli
from steerflow.data import imports
from steerflow.demos import cube_oracle, fetch_scripted, make_demos, teleop, write_demos
from steerflow.demos.teleop import Artifacts
from steerflow.envs import fetch

N = 6  # demos per setting
# each artifact alone, at a strength where every demo shows it (jitter: its default std)
ALONE = {"pause": 1.0, "hesitation": 1.0, "correction": 1.0, "jitter": 0.05, "release": 1.0}


@functools.cache
def fetch_run(artifacts: Artifacts, seed: int = 0, n: int = N):
    return fetch_scripted.fetch_demos(n, seed, artifacts)


def alone(name: str) -> Artifacts:
    return replace(Artifacts.none(), **{name: ALONE[name]})


def as_dict(flat: np.ndarray) -> dict:
    return {k: flat[cols] for k, cols in fetch_scripted.OBS_SLICES.items()}


def clean_commands(demo: dict) -> np.ndarray:
    """(T, 4): the scripted operator's own commands at the demo's observations, replayed here."""
    operator = fetch_scripted.FetchOperator()
    operator.reset(as_dict(demo["observations"][0]))
    return np.stack([operator(as_dict(o))[1] for o in demo["observations"]])


def deviating(demo: dict) -> np.ndarray:
    """(T,) bool: the steps whose action is not the operator's clean command."""
    return np.abs(demo["actions"] - np.clip(clean_commands(demo), -1, 1)).max(1) > 1e-4


def still(actions):  # zero motion
    return (actions[:, :3] == 0).all(1)


def first_close(actions) -> int:
    return int(np.flatnonzero(actions[:, 3] == -1)[0])


def reopens(actions) -> bool:
    """The gripper opens after the first close and closes again later (a premature release)."""
    grip = actions[first_close(actions):, 3]
    opened = np.flatnonzero(grip == 1)
    return len(opened) > 0 and (grip[opened[0]:] == -1).any()


def solved(demo) -> np.ndarray:
    """(T,) bool: the block within 5 cm of the goal after each action."""
    nxt = demo["next_observations"]
    return np.linalg.norm(nxt[:, 25:28] - nxt[:, 28:31], axis=1) < 0.05


# ------------------------------------------------------------------------------- the environment

def test_fetch_env_resets_and_steps():
    env = fetch.pick_and_place()
    ob, _ = env.reset(seed=0)
    assert {k: v.shape for k, v in ob.items()} == {"observation": (25,), "achieved_goal": (3,), "desired_goal": (3,)}
    assert env.action_space.shape == (4,) and env.spec.max_episode_steps == 50
    for _ in range(50):
        ob, reward, terminated, truncated, info = env.step(np.array([0.2, 0.0, 0.5, 1.0], np.float32))
    assert truncated and not terminated and info["is_success"] in (0.0, 1.0) and reward in (0.0, -1.0)
    assert fetch.apply_mujoco_compat() == fetch.joint_membership_broken()  # idempotent


def test_without_the_shim_the_env_cannot_be_built(monkeypatch):
    if not fetch.joint_membership_broken():
        pytest.skip("this mujoco's joint-type enum works with `in`: the shim is not installed")
    import mujoco
    from gymnasium_robotics.utils import mujoco_utils

    monkeypatch.setattr(mujoco_utils, "mujoco", mujoco)
    with pytest.raises(AssertionError):
        fetch.pick_and_place()


# ------------------------------------------------------------------------------- clean demos

def test_clean_scripted_demos_succeed_with_the_operators_own_commands():
    demos, stats = fetch_run(Artifacts.none())
    assert len(demos) == N and stats["discarded"] == 0 and stats["attempts"] == N
    assert sum(stats["counts"].values()) == 0
    for demo in demos:
        T = len(demo["actions"])
        assert demo["observations"].shape == demo["next_observations"].shape == (T, 31) and T <= 50
        assert demo["actions"].shape == (T, 4) and np.abs(demo["actions"]).max() <= 1
        np.testing.assert_array_equal(demo["observations"][1:], demo["next_observations"][:-1])
        # it ends at the first success: the last action reached it, none before did
        assert solved(demo)[-1] and not solved(demo)[:-1].any()
        # no artifact: every action is the operator's command, never still, no release
        assert not deviating(demo).any() and not still(demo["actions"]).any() and not reopens(demo["actions"])
        assert set(demo["events"]) == {""}


# ------------------------------------------------------------------------------- each artifact alone

def test_pauses_are_runs_of_zero_motion_with_the_gripper_held():
    demos, stats = fetch_run(alone("pause"))
    assert stats["counts"]["pause"] >= N
    for demo in demos:
        a, dev = demo["actions"], deviating(demo)
        assert dev.any() and (still(a) == dev).all()  # exactly the inserted steps are still
        t = np.flatnonzero(dev)
        assert (a[t, 3] == a[t - 1, 3]).all()  # gripper command held
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], dev, [0]]))))[::2]
        assert runs.min() >= teleop.PAUSE_STEPS[0] and runs.max() <= teleop.PAUSE_STEPS[1]


def test_hesitation_slows_the_descent_and_stops_before_the_grasp():
    demos, stats = fetch_run(alone("hesitation"))
    assert stats["counts"]["hesitation"] == N
    for demo in demos:
        a, clean, dev = demo["actions"], clean_commands(demo), deviating(demo)
        close = first_close(a)
        stops = np.flatnonzero(still(a))
        assert teleop.PAUSE_STEPS[0] <= len(stops) <= teleop.PAUSE_STEPS[1]
        np.testing.assert_array_equal(stops, np.arange(close - len(stops), close))  # right before closing
        assert (a[stops, 3] == 1).all()  # with the gripper still open
        slowed = dev & ~still(a)  # the rest: the descent at reduced speed
        assert slowed.any() and set(demo["phases"][slowed]) == {"descend"}
        np.testing.assert_allclose(a[slowed, :3], teleop.SLOWDOWN * clean[slowed, :3], atol=1e-6)


def test_micro_corrections_overshoot_then_move_back():
    demos, stats = fetch_run(alone("correction"))
    assert stats["counts"]["correction"] >= N
    for demo in demos:
        a, clean, dev = demo["actions"], clean_commands(demo), deviating(demo)
        for t in np.flatnonzero(dev):
            overshoot = a[t, :3]
            # one step further along the last move, at the overshoot's size, gripper held
            np.testing.assert_allclose(np.abs(overshoot).max(), teleop.OVERSHOOT, atol=1e-6)
            assert overshoot @ a[t - 1, :3] > 0 and a[t, 3] == a[t - 1, 3]
            assert (clean[t + 1:t + 4, :3] @ overshoot < 0).any()  # then the operator corrects it


def test_jitter_is_noise_on_motion_only():
    demos, stats = fetch_run(alone("jitter"))
    assert stats["counts"]["jitter"] == sum(len(d["actions"]) for d in demos)
    noise = []
    for demo in demos:
        a, clean = demo["actions"], np.clip(clean_commands(demo), -1, 1)
        np.testing.assert_array_equal(a[:, 3], clean[:, 3])
        inside = np.abs(clean[:, :3]) < 0.8  # away from the clipping bounds
        noise.append((a[:, :3] - clean[:, :3])[inside])
    noise = np.concatenate(noise)
    assert (noise != 0).all() and abs(noise.std() / ALONE["jitter"] - 1) < 0.25 and abs(noise.mean()) < 0.02


def test_a_premature_release_opens_mid_transport_then_regrasps_and_still_succeeds():
    demos, stats = fetch_run(alone("release"))
    released = ["release" in d["events"] for d in demos]
    assert stats["counts"]["release"] == sum(released) >= N // 2
    for demo in (d for d, r in zip(demos, released) if not r):  # these reached the goal before it was due
        assert (demo["phases"] == "carry").sum() < teleop.RELEASE_AFTER[1]
    for demo in (d for d, r in zip(demos, released) if r):
        a = demo["actions"]
        assert reopens(a) and solved(demo)[-1]
        opened = np.flatnonzero(demo["events"] == "release")
        assert len(opened) == teleop.RELEASE_STEPS and (a[opened, 3] == 1).all() and still(a[opened]).all()
        assert first_close(a) < opened[0] and "carry" in demo["phases"][:opened[0] + 1]
        assert (a[opened[-1] + 1:, 3] == -1).any()  # closed again


def test_all_artifacts_together_and_the_cli_names():
    assert Artifacts.parse("all") == Artifacts.default() and Artifacts.parse("none") == Artifacts.none()
    default = Artifacts.default()
    assert Artifacts.parse("pause, jitter") == Artifacts(pause=default.pause, jitter=default.jitter)
    assert set(default.active()) == set(teleop.ARTIFACTS)
    for bad in ("pause,bogus", "", "pause,pause", "all,pause"):
        with pytest.raises(ValueError, match="--artifacts"):
            Artifacts.parse(bad)
    demos, stats = fetch_run(Artifacts.default())
    assert len(demos) == N and all(solved(d)[-1] for d in demos)
    assert all(stats["counts"][n] > 0 for n in ("pause", "correction", "jitter"))


def test_a_demonstrator_that_cannot_succeed_gives_up(monkeypatch, tmp_path, capsys):
    with pytest.raises(RuntimeError, match="only 0 of 3"):
        fetch_scripted.fetch_demos(1, max_steps=3, max_tries=3)  # too few steps to reach any goal

    def failing(*args, **kwargs):
        raise RuntimeError("FetchPickAndPlace: only 0 of 20 scripted episodes succeeded")

    monkeypatch.setattr(fetch_scripted, "fetch_demos", failing)
    with pytest.raises(SystemExit) as err:
        _demos_cli(["fetch-pick-and-place", "--out", str(tmp_path / "d.hdf5")], capsys)
    assert err.value.code == 1 and "only 0 of 20" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_same_seed_makes_the_same_demos():
    (first, s1), (again, s2) = fetch_scripted.fetch_demos(3, 7, Artifacts.default()), fetch_run(Artifacts.default(), 7, 3)
    assert s1 == s2
    for a, b in zip(first, again):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other, _ = fetch_run(Artifacts.default(), 8, 3)
    assert not np.array_equal(first[0]["actions"], other[0]["actions"])


# ------------------------------------------------------------------------------- cube-single

def test_without_artifacts_the_teleoperator_passes_commands_through():
    op, rng = teleop.Teleop(Artifacts.none(), seed=0), np.random.default_rng(0)
    for phase in rng.choice(teleop.PHASES, 200):
        command = rng.uniform(-1, 1, 5).astype(np.float32)
        action, progress, event = op.step(str(phase), command)
        np.testing.assert_array_equal(action, command)
        assert progress == 1.0 and event == ""


def test_the_cube_oracle_hook_changes_nothing_without_artifacts():
    from steerflow.demos.writers import oracle_task_demos

    plain = oracle_task_demos("cube-single-task2", 1, seed=0)
    hooked, stats = cube_oracle.cube_demos("cube-single-task2", 1, seed=0)
    assert stats == {"attempts": 1, "discarded": 0, "trivial": 0, "counts": dict.fromkeys(teleop.ARTIFACTS, 0)}
    for key in ("observations", "actions", "next_observations"):
        np.testing.assert_array_equal(plain[0][key], hooked[0][key])


def test_the_cube_hook_holds_the_plan_clock_while_the_operator_is_still():
    """A stand-in oracle with OGBench's keyframe names: each pause step delays its plan by one step
    (times exact in binary: 1/16 s steps, 8 per segment)."""
    keyframes = dict(zip(["initial", *cube_oracle.SEGMENT_PHASE], np.arange(11) * 0.5))

    class Oracle:
        _t_init = 0.0

        def compute_keyframes(self, plan_input):
            return keyframes, None, None

    class Env:
        _control_timestep = 0.0625

    hook, oracle = cube_oracle.TeleopHook(Artifacts(pause=1.0), seed=0), Oracle()
    hook.reset(Env(), oracle)
    oracle.compute_keyframes(None)  # what oracle.reset does
    for step in range(120):
        before = oracle._t_init
        action = hook(None, {"time": np.array([step * 0.0625])}, np.full(5, 0.5, np.float32))
        paused = (action[:4] == 0).all()
        assert oracle._t_init - before == (0.0625 if paused else 0.0)
    phases, events = hook.record().values()
    # the plan advanced only on the steps the operator moved: 8 steps per segment, then "hold"
    planned = np.concatenate([np.repeat(list(cube_oracle.SEGMENT_PHASE.values()), 8), ["hold"] * 120])
    moved = phases[events == ""]
    assert (moved == planned[:len(moved)]).all() and hook.counts["pause"] >= 5


def test_cube_oracle_demos_pause_and_release_then_regrasp():
    demos, stats = make_demos("cube-single-task2", 2, seed=0, artifacts=Artifacts(release=1.0, pause=1.0))
    assert stats["counts"]["release"] == 2 and stats["counts"]["pause"] > 0
    for demo in demos:
        a, events = demo["actions"], demo["events"]
        opened = np.flatnonzero(events == "release")
        assert len(opened) == teleop.RELEASE_STEPS and (a[opened, 4] == -1).all() and still(a[opened]).all()
        assert set(demo["phases"][opened]) == {"carry"} and (a[opened[-1] + 1:, 4] > 0).any()
        assert "grasp" in demo["phases"][opened[-1]:]  # the block fell: the oracle re-planned and picked it up again
        paused = events == "pause"
        assert paused.any() and (a[paused, :4] == 0).all()


# ------------------------------------------------------------------------------- files and the CLI

def test_the_hdf5_file_imports_like_a_users(tmp_path, data_root):
    demos, _ = fetch_run(Artifacts.default())
    path = write_demos(tmp_path / "fetch.hdf5", "fetch-pick-and-place", demos,
                       Artifacts.default(), seed=0)
    with h5py.File(path) as f:
        assert set(f["data/demo_0/obs"]) == set(fetch.OBS_KEYS) and "rewards" not in f["data/demo_0"]
        assert f["data/demo_0/obs/observation"].shape == (len(demos[0]["actions"]), 25)
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["env_name"] == fetch.ENV_ID and env_args["demos"]["artifacts"]["jitter"] == 0.05
    imports.import_path("robomimic", path, "fetch-teleop", obs_keys=list(fetch.OBS_KEYS))
    train, val, info, _ = imports.load_imported("fetch-teleop")
    assert (info["obs_dim"], info["action_dim"], info["episodes"]) == (31, 4, N - 1)
    T = sum(len(d["actions"]) for d in demos)
    for key, width in (("observations", 31), ("next_observations", 31), ("actions", 4)):
        both = np.concatenate([train[key], val[key]])
        assert both.shape == (T, width)
        np.testing.assert_array_equal(both, np.concatenate([d[key] for d in demos]))
    assert "rewards" not in train and train["terminals"].sum() == N - 1


def _demos_cli(argv, capsys):
    cli.main(["data", "demos", *argv])
    return capsys.readouterr()


def test_the_cli_writes_the_file_under_a_temporary_name_and_reports(tmp_path, capsys):
    out = tmp_path / "d.hdf5"
    res = _demos_cli(["fetch-pick-and-place", "--episodes", "2", "--artifacts", "pause,release", "--out", str(out)], capsys)
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["d.hdf5"]
    assert "wrote 2 demos" in res.out and "pause " in res.out and "discarded 0 failed attempts of 2" in res.out
    assert "--obs-keys observation,achieved_goal,desired_goal" in res.out
    with h5py.File(out) as f:
        assert len(f["data"]) == 2


@pytest.mark.parametrize("flag,value", [("--artifacts", "pause,bogus"), ("--episodes", "0"), ("--seed", "-1"),
                                        ("--out", "demos.npz"), ("--out", "missing/demos.hdf5"), ("--out", "exists.hdf5")])
def test_bad_flags_exit_2_naming_the_flag_before_any_work(flag, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.hdf5").write_bytes(b"")
    monkeypatch.setattr(fetch_scripted, "fetch_demos", lambda *a, **k: pytest.fail("work started"))
    argv = ["fetch-pick-and-place", "--out", "demos.hdf5", flag, value]
    with pytest.raises(SystemExit) as err:
        _demos_cli(argv, capsys)
    assert err.value.code == 2 and flag in capsys.readouterr().err


def test_an_unknown_source_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        _demos_cli(["cube-single-task9", "--out", str(tmp_path / "d.hdf5")], capsys)
    assert err.value.code == 2 and "cube-single-taskN" in capsys.readouterr().err
