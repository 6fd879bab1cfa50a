"""A user's own Gymnasium env (`--env MODULE:FACTORY`, `steerflow.envs.gym_env`): dict observations
flattened in the dataset's key order, success read from info, the run's normalisation applied to
observations and inverted on actions, the online transitions' rewards and masks equal to the
dataset's relabelling, and a killed online phase in that env resuming to the same end.

The env is `steerflow.envs.toy:point_reach` (actions in [-2, 2], so normalisation matters); its
demos are a noisy controller's, imported like a user's file."""

import json

import numpy as np
import pytest

from steerflow import cli
from steerflow.data.imports import apply_reward_mode, import_episodes, load_imported
from steerflow.envs import toy
from steerflow.envs.gym_env import GymEnvSpec, flatten_obs

TOY = "steerflow.envs.toy:point_reach"
KEYS = ["observation", "desired_goal"]


@pytest.fixture(scope="module")
def toy_data(data_root):
    demos = toy.scripted_demos(20, seed=0)
    import_episodes(demos, "toy", "robomimic", "toy demos", options={"obs_keys": KEYS})
    return demos


def test_dict_observations_are_flattened_in_the_recorded_key_order_and_success_is_read_from_info():
    obs = {"observation": np.array([1.0, 2.0]), "desired_goal": np.array([[3.0], [4.0]])}
    assert flatten_obs(obs, ("observation", "desired_goal")).tolist() == [1, 2, 3, 4]
    assert flatten_obs(obs, ("desired_goal", "observation")).tolist() == [3, 4, 1, 2]
    with pytest.raises(ValueError, match="no key.*'achieved_goal'"):
        flatten_obs(obs, ("achieved_goal",))
    with pytest.raises(ValueError, match="dict with keys.*--obs-keys"):
        flatten_obs(obs, None)

    spec = GymEnvSpec(TOY, obs_keys=tuple(KEYS)).probe()
    assert (spec.obs_dim, spec.action_dim, spec.episode_length) == (4, 2, 40)
    env = spec.make()
    flat, info = env.reset(seed=3)
    inner = env.unwrapped
    assert flat.tolist() == [*inner.pos.tolist(), *inner.goal.tolist()] and info["success"] is False
    inner.pos = inner.goal.copy()  # on the goal: the next step succeeds and ends the episode
    _, _, terminated, truncated, info = env.step(np.zeros(2))
    assert info["success"] is True and terminated and not truncated
    with pytest.raises(ValueError, match="--success .*not callable"):
        GymEnvSpec(TOY, obs_keys=tuple(KEYS), success="steerflow.envs.toy:SUCCESS_RADIUS").make()
    by_fn = GymEnvSpec(TOY, obs_keys=tuple(KEYS), success="operator:is_").make()  # is_(obs, info): never
    by_fn.reset(seed=3)
    by_fn.unwrapped.pos = by_fn.unwrapped.goal.copy()
    assert by_fn.step(np.zeros(2))[4]["success"] is False
    limited = GymEnvSpec(TOY, obs_keys=tuple(KEYS), max_episode_steps=3).make()
    limited.reset(seed=0)
    assert [limited.step(np.zeros(2))[3] for _ in range(3)] == [False, False, True]  # the time limit


def test_sparse_success_rewards_and_masks_are_the_datasets_on_both_sides_of_the_switch(toy_data):
    """Offline: a demo's last transition (the one reaching success) is r = 0, mask = 0, the others
    r = -1, mask = 1. Online: the transition whose next state is a success gets the same."""
    train, _, _, _ = load_imported("toy")
    relabelled, _ = apply_reward_mode(train, "sparse-success", "toy")
    pos, goal = train["next_observations"][:, :2], train["next_observations"][:, 2:]
    reached = np.linalg.norm(pos - goal, axis=1) < toy.SUCCESS_RADIUS
    assert np.array_equal(relabelled["rewards"] == 0, reached) and np.array_equal(relabelled["masks"] == 0, reached)
    spec = GymEnvSpec(TOY, obs_keys=tuple(KEYS), reward="sparse-success")
    rewards, masks = spec.rewards_masks(np.array([-0.5, -0.05]), np.array([False, True]))
    assert rewards.tolist() == [-1, 0] and masks.tolist() == [1, 0]
    rewards, masks = GymEnvSpec(TOY, reward="given").rewards_masks(np.array([-0.5, -0.05]), np.array([False, True]))
    assert rewards.tolist() == pytest.approx([-0.5, -0.05]) and masks.tolist() == [1, 0]


ONLINE = ["--train-set", "steps=400", "eval_every=1000", "eval_episodes=2", "online_envs=2",
          "--online-steps", "120", "--online-ratio", "0.5"]


def _train(out, *extra):
    cli.main(["train", "--agent", "bc-mf", "--dataset", "toy", "--reward", "sparse-success", "--env", TOY,
              "--preset", "smoke", *ONLINE, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def straight(toy_data, tmp_path_factory):
    """An offline-then-online toy run, uninterrupted."""
    out = tmp_path_factory.mktemp("toy") / "straight"
    _train(out)
    return out


def test_online_phase_acts_in_env_units_and_stores_normalised_transitions_with_the_datasets_rewards(straight):
    from steerflow.data import normalization
    from steerflow.train.checkpoint import _read

    final = json.loads((straight / "final.json").read_text())
    assert final["online_env_steps"][0] >= 120 and final["task"] == f"env:{TOY}"
    stored = json.loads((straight / "config.json").read_text())["run"]["env"]
    assert stored["factory"] == TOY
    norm = normalization.load(straight)
    assert not norm.is_identity()
    buf = {k: np.asarray(v)[0] for k, v in _read(straight)["online"]["buffers"].items()}
    rows = buf["time"] >= 0
    obs, nxt = (buf[k][rows] * np.asarray(norm.obs_std) + np.asarray(norm.obs_mean)
                for k in ("observations", "next_observations"))
    env_actions = np.clip(np.asarray(norm.denormalize_action(buf["actions"][rows])), -2, 2)
    # the env moved by the denormalised action: stored observations and actions are in the agent's units
    np.testing.assert_allclose(nxt[:, :2], np.clip(obs[:, :2] + toy.SPEED * env_actions, -1, 1), atol=1e-4)
    assert np.abs(buf["actions"][rows]).max() <= 1.0
    reached = np.linalg.norm(nxt[:, :2] - nxt[:, 2:], axis=1) < toy.SUCCESS_RADIUS
    assert np.array_equal(buf["rewards"][rows] == 0, reached) and np.array_equal(buf["masks"][rows] == 0, reached)
    assert set(np.unique(buf["rewards"][rows])) <= {0.0, -1.0} and reached.sum() >= 1  # not vacuous


def test_a_killed_online_phase_in_a_user_env_resumes_to_the_same_end(straight, tmp_path, monkeypatch):
    from steerflow.train import loop

    real_save = loop.save_checkpoint

    def save_then_die(run_dir, states, keys, step, online=None):
        real_save(run_dir, states, keys, step, online=online)
        if online is not None and int(online["round"]) >= 1:
            raise KeyboardInterrupt  # killed right after an online checkpoint between rounds

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(SystemExit) as exit_:  # the CLI's exit on an interrupt
        _train(tmp_path / "killed")
    assert exit_.value.code == 130
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    _train(tmp_path / "killed", "--resume")
    for name in ("checkpoints/latest.msgpack", "eval.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (straight / name).read_bytes(), name


def test_a_wall_budget_in_the_online_phase_stops_at_a_round_boundary_and_resumes_to_the_same_end(
        straight, tmp_path, monkeypatch):
    """`max_wall_s` reached online (here: after the first round): the run stops where a checkpoint
    resumes exactly, evaluates there, says so in final.json, and `--resume` ends as the straight run."""
    from steerflow.train import loop

    real = loop.run_online

    def first_round_only(phase, *args):
        return real(phase, *args[:-1], lambda: phase.counters["round"] >= 1)

    monkeypatch.setattr(loop, "run_online", first_round_only)
    _train(tmp_path / "stopped", "--train-set", "max_wall_s=3600")
    final = json.loads((tmp_path / "stopped" / "final.json").read_text())
    assert final["stopped"] == "max_wall_s" and 0 < final["online_env_steps"][0] < 120
    monkeypatch.setattr(loop, "run_online", real)
    _train(tmp_path / "stopped", "--resume")
    assert "stopped" not in json.loads((tmp_path / "stopped" / "final.json").read_text())
    assert (tmp_path / "stopped" / "checkpoints/latest.msgpack").read_bytes() == \
        (straight / "checkpoints/latest.msgpack").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--task", "cube-single-task2", "--env", TOY], "--env .*only for imported data"),
    (["--dataset", "toy", "--reward", "sparse-success", "--env-set", "a=1"], "--env-set: only with --env"),
    (["--dataset", "toy", "--reward", "sparse-success", "--env", TOY, "--eval-task", "cube-single-task2"],
     "name one env"),
    (["--dataset", "toy", "--reward", "sparse-success", "--env", "steerflow.envs.toy:nothing"], "no attribute"),
    (["--dataset", "toy", "--reward", "sparse-success", "--env", "cube-single-task2-v9"], "registered Gymnasium id"),
    (["--dataset", "toy", "--reward", "sparse-success", "--env", TOY, "--env-set", "speed=2"],
     "the factory failed with speed=2 .*TypeError"),
    (["--dataset", "toy", "--reward", "sparse-success", "--env", "steerflow.envs.toy:point_reach",
      "--env-set", "max_episode_steps=0", "--max-episode-steps", "0"], "--max-episode-steps 0"),
])
def test_bad_env_flags_are_refused_before_any_work(toy_data, tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--agent", "bc-mf", "--preset", "smoke", "--out", str(tmp_path / "r"), *argv])
    assert exit_.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_an_env_whose_observations_do_not_match_the_dataset_is_named(toy_data, tmp_path, capsys):
    demos = toy_data[:4]
    import_episodes([{**d, "observations": d["observations"][:, :3], "next_observations": d["next_observations"][:, :3]}
                     for d in demos], "toy3", "robomimic", "toy demos", options={"obs_keys": KEYS})
    with pytest.raises(SystemExit):
        cli.main(["train", "--agent", "bc-mf", "--preset", "smoke", "--dataset", "toy3", "--reward", "sparse-success",
                  "--env", TOY, "--out", str(tmp_path / "r")])
    assert "--env env:steerflow.envs.toy:point_reach: its env has observations of 4" in capsys.readouterr().err


def test_python_api_trains_on_imported_demos_in_a_user_env_then_finetunes_it_online(toy_data, tmp_path):
    import steerflow

    run = steerflow.train_agent("bc-mf", dataset="toy", reward="sparse-success", env=TOY, env_kwargs={"max_episode_steps": 30},
                                preset="smoke", out=tmp_path / "offline", quiet=True,
                                train_overrides={"eval_episodes": 2, "online_envs": 1})
    stored = json.loads((run / "config.json").read_text())["run"]
    assert stored["env"] == {"factory": TOY, "kwargs": {"max_episode_steps": 30}, "max_episode_steps": None, "success": None}
    from steerflow.train import RunSpec, train_command

    # a `--parallel processes` child gets the same env: its command parses back to the stored run
    cmd = train_command(RunSpec(**stored), run)
    assert cmd[cmd.index("--env") + 1] == TOY and cli.parse(cmd[3:]).spec() == RunSpec(**stored)
    online = steerflow.finetune(run, online_steps=40, quiet=True)
    final = json.loads((online / "final.json").read_text())
    assert online == tmp_path / "offline-online" and final["online_env_steps"] == [40] and final["online_ratio"] == 0.5
    assert final["offline_steps"] == 40 and final["task"] == f"env:{TOY}"


FETCH = "steerflow.envs.fetch:pick_and_place"


@pytest.fixture(scope="module")
def fetch_data(data_root, tmp_path_factory):
    from steerflow.demos import Artifacts, import_keys, make_demos, write_demos

    demos, _ = make_demos("fetch-pick-and-place", 6, seed=0, artifacts=Artifacts.default())
    path = write_demos(tmp_path_factory.mktemp("fetch") / "demos.hdf5", "fetch-pick-and-place", demos,
                       Artifacts.default(), seed=0)
    cli.main(["data", "import", "robomimic", str(path), "--name", "fetch6", "--obs-keys", ",".join(import_keys("fetch-pick-and-place"))])
    return path


@pytest.mark.slow
def test_fetch_offline_then_online_in_one_run_with_the_datasets_rewards_and_an_exact_resume(fetch_data, tmp_path,
                                                                                           monkeypatch):
    """The practitioner's loop on FetchPickAndPlace (Gymnasium-Robotics): imported teleoperation-like
    demos, an offline phase, then 100 env steps online in the same run directory; the online
    transitions' rewards are the dataset's (0 and mask 0 exactly where the next state has the
    object within Fetch's 5 cm of the goal; a smoke policy seldom gets there: the toy env's test
    above checks successful transitions), killed after its first online checkpoint and resumed,
    the run ends as the uninterrupted one."""
    from steerflow.data import normalization
    from steerflow.train import loop
    from steerflow.train.checkpoint import _read

    argv = ["train", "--agent", "lps", "--dataset", "fetch6", "--reward", "sparse-success", "--env", FETCH,
            "--preset", "smoke", "--train-set", "eval_episodes=2", "online_envs=1", "--online-steps", "100",
            "--online-ratio", "0.5"]
    cli.main([*argv, "--out", str(tmp_path / "straight")])
    final = json.loads((tmp_path / "straight" / "final.json").read_text())
    assert final["online_env_steps"] == [100] and final["task"] == f"env:{FETCH}"
    norm = normalization.load(tmp_path / "straight")
    buf = {k: np.asarray(v)[0] for k, v in _read(tmp_path / "straight")["online"]["buffers"].items()}
    rows = buf["time"] >= 0
    nxt = buf["next_observations"][rows] * np.asarray(norm.obs_std) + np.asarray(norm.obs_mean)
    reached = np.linalg.norm(nxt[:, 25:28] - nxt[:, 28:31], axis=1) < 0.05  # achieved_goal, desired_goal
    assert np.array_equal(buf["rewards"][rows] == 0, reached) and np.array_equal(buf["masks"][rows] == 0, reached)
    real_save = loop.save_checkpoint

    def save_then_die(run_dir, states, keys, step, online=None):
        real_save(run_dir, states, keys, step, online=online)
        if online is not None and int(online["round"]) >= 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(SystemExit):
        cli.main([*argv, "--out", str(tmp_path / "killed")])
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert int(_read(tmp_path / "killed")["online"]["round"]) == 1
    cli.main([*argv, "--out", str(tmp_path / "killed"), "--resume"])
    for name in ("checkpoints/latest.msgpack", "eval.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
