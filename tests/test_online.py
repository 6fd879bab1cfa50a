"""Offline-to-online fine-tuning: the replay buffer's validity rule on synthetic
episodes, the two sampling modes, the relabelling of online transitions against OGBench's
offline relabelling, an end-to-end offline → online run in the real cube-single env, and
kill-and-resume of the online phase."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerflow import cli
from steerflow import train as trainer
from steerflow.data.chunks import build_chunk_dataset
from steerflow.data.replay import append_chunks, init_replay, sample_mixed, sample_replay
from steerflow.train import loop

H = 3
_append = jax.jit(append_chunks)
_mixed = jax.jit(sample_mixed, static_argnums=(3, 4))
_replay = jax.jit(sample_replay, static_argnums=2)


def _fill(buf, plan):
    """Append per-lane chunks; `plan` is a list of (lengths per lane, episode id per lane). Each
    transition's observation encodes (lane, time, episode) and its reward is its time, so that a
    sampled chunk says where it came from. Returns the buffer and the reference list of rows."""
    L = buf.lanes
    written = [[] for _ in range(L)]  # per lane: (time, episode) in order
    for lengths, episodes in plan:
        obs = np.zeros((L, H, 3), np.float32)
        rew = np.zeros((L, H), np.float32)
        for lane in range(L):
            for k in range(lengths[lane]):
                t = len(written[lane])
                obs[lane, k] = (lane, t, episodes[lane])
                rew[lane, k] = t
                written[lane].append((t, episodes[lane]))
        chunk = {"observations": obs, "actions": np.zeros((L, H, 2), np.float32), "rewards": rew,
                 "masks": np.ones((L, H), np.float32), "next_observations": obs + 0.5}
        buf = _append(buf, {k: jnp.asarray(v) for k, v in chunk.items()}, jnp.asarray(lengths, jnp.int32),
                            jnp.asarray(episodes, jnp.int32))
    return buf, written


def _expected_valid(written, capacity):
    """(lane, time) of every start whose H transitions are all still held and of one episode."""
    valid = set()
    for lane, rows in enumerate(written):
        kept = rows[max(0, len(rows) - capacity):]  # a ring keeps the newest `capacity`
        for i in range(len(kept) - H + 1):
            if len({ep for _, ep in kept[i:i + H]}) == 1:
                valid.add((lane, kept[i][0]))
    return valid


@pytest.mark.parametrize("capacity", [64, 7])  # 7: the ring wraps, old rows are overwritten
def test_replay_validity_never_crosses_an_episode_end_nor_the_newest_transition(capacity):
    buf = init_replay(lanes=2, capacity=capacity, obs_dim=3, action_dim=2, horizon=H, discount=0.5)
    # lane 0: episode 0 of 5 steps (ends mid-chunk), episode 1 in progress (4 steps so far);
    # lane 1: episode 0 of 2 steps (shorter than a chunk), episode 1 of 3, episode 2 in progress (1 step)
    plan = [([3, 2], [0, 0]), ([2, 3], [0, 1]), ([3, 1], [1, 2]), ([1, 0], [1, 2])]
    buf, written = _fill(buf, plan)
    flags = np.asarray(buf.valid).reshape(2, capacity)
    times = np.asarray(buf.time).reshape(2, capacity)
    marked = {(lane, int(times[lane, c])) for lane, c in zip(*np.nonzero(flags))}
    assert marked == _expected_valid(written, capacity) and marked  # every valid start, and only those
    assert (0, 7) not in marked and (0, 3) not in marked  # past the newest / across lane 0's episode end

    batch = _replay(buf, jax.random.PRNGKey(0), 512)
    obs, rewards = np.asarray(batch["observations"]), np.asarray(batch["rewards"])
    lane, t0 = obs[:, 0].astype(int), obs[:, 1].astype(int)
    assert {(a, b) for a, b in zip(lane, t0)} == marked  # drawn from all valid starts (512 draws, few starts)
    np.testing.assert_allclose(rewards, t0 + 0.5 * (t0 + 1) + 0.25 * (t0 + 2))  # H consecutive rows of the lane
    np.testing.assert_allclose(np.asarray(batch["next_observations"])[:, 1], t0 + H - 1 + 0.5)


def _offline(n_rows: int, value: float):
    data = {"observations": np.full((n_rows, 3), value, np.float32), "actions": np.zeros((n_rows, 2), np.float32),
            "rewards": np.zeros(n_rows, np.float32), "masks": np.ones(n_rows, np.float32),
            "next_observations": np.full((n_rows, 3), value, np.float32), "terminals": np.zeros(n_rows, np.float32)}
    data["terminals"][-1] = 1
    return build_chunk_dataset(data, H, 0.5)


def test_balanced_and_union_sampling_shares():
    offline = _offline(302, -1.0)  # 300 valid starts, observations -1
    buf = init_replay(lanes=2, capacity=64, obs_dim=3, action_dim=2, horizon=H, discount=0.5)
    empty = _mixed(offline, buf, jax.random.PRNGKey(1), 1024, 0.5)
    assert np.all(np.asarray(empty["observations"])[:, 0] == -1)  # no online chunk yet: offline only
    buf, _ = _fill(buf, [([3, 3], [0, 0])] * 17)  # 2 lanes x (51 - 2) = 98 valid online starts
    assert int(buf.num_valid) == 98
    batch = _mixed(offline, buf, jax.random.PRNGKey(2), 1024, 0.5)
    online = np.asarray(batch["observations"])[:, 0] >= 0
    assert online.sum() == 512  # exactly round(R·B) online
    shares = []
    for seed in range(8):
        batch = _mixed(offline, buf, jax.random.PRNGKey(seed), 1024, -1.0)
        shares.append(np.mean(np.asarray(batch["observations"])[:, 0] >= 0))
    # union: online with probability 98 / (300 + 98) = 0.246; 8192 draws, sd 0.005
    assert abs(np.mean(shares) - 98 / 398) < 0.02


def test_online_rewards_and_masks_equal_the_offline_relabelling():
    """The rewards/masks the online phase stores for real cube-single transitions are those that
    OGBench's relabelling gives the same states offline, including a solved state (mask 0)."""
    from ogbench.relabel_utils import relabel_dataset

    from steerflow.data.tasks import make_env, online_rewards_masks, parse_task, sparse_rewards
    from steerflow.envs.pool import _LocalEnvs

    task = parse_task("cube-single-task2")
    envs = _LocalEnvs(task, 1)
    env = envs.envs[0].unwrapped
    envs.reset([3])
    rng = np.random.default_rng(0)
    qpos, qvel, env_rewards = [], [], []
    for t in range(30):
        if t == 20:  # put the cube on its target: the states from here on solve the task
            env._data.joint("object_joint_0").qpos[:3] = env._data.mocap_pos[env._cube_target_mocap_ids[0]]
            import mujoco
            mujoco.mj_forward(env._model, env._data)
        qpos.append(env._data.qpos.copy()), qvel.append(env._data.qvel.copy())
        _, done, _, reward = envs.step(rng.uniform(-0.3, 0.3, (1, 5)) * (t < 20), np.array([True]))
        env_rewards.append(reward[0])
        if done[0]:
            break
    rewards, masks = online_rewards_masks(task, np.array(env_rewards))
    relabel_env = make_env(task)
    dataset = {"qpos": np.array(qpos), "qvel": np.array(qvel)}
    relabel_dataset(task.dataset_name, relabel_env, dataset)
    np.testing.assert_array_equal(rewards, dataset["rewards"])
    np.testing.assert_array_equal(masks, dataset["masks"])
    assert (masks == 0).any() and (masks == 1).any()  # both kinds of state were met
    sparse, sparse_masks = online_rewards_masks(parse_task("cube-single-task2-sparse"), np.array(env_rewards))
    np.testing.assert_array_equal(sparse, sparse_rewards(dataset["rewards"]))
    np.testing.assert_array_equal(sparse_masks, dataset["masks"])
    envs.close(), relabel_env.close()


TINY = {"dataset_episodes": "3", "dataset_episode_steps": "101"}
ONLINE = {"online_envs": "1", "eval_every": "1000", "eval_episodes": "1"}


def test_offline_then_online_in_one_run_and_a_killed_online_run_resumes_to_the_same_end(data_root, tmp_path,
                                                                                          monkeypatch, capsys):
    """From the CLI: 40 offline steps, then (`--from` that run, in a new directory) 230 env steps
    online (one env: a round of 200 steps, then 30) with balanced batches; the new run's curves
    continue the offline ones. The same run made in one go (offline then online), killed right
    after its first online checkpoint (between the two rounds) and resumed, ends with the same
    checkpoint (agent, buffer, counters), evaluations and metrics rows."""
    common = ["train", "--agent", "bc-mf", "--task", "cube-single-task2", "--preset", "smoke", "--train-set",
              *(f"{k}={v}" for k, v in {**TINY, **ONLINE}.items())]
    cli.main([*common, "--out", str(tmp_path / "offline")])
    straight = tmp_path / "straight"
    cli.main([*common, "--from", str(tmp_path / "offline"), "--online-steps", "230", "--online-ratio", "0.5",
              "--updates-per-env-step", "0.5", "--out", str(straight)])
    assert "final success" in capsys.readouterr().out
    final = json.loads((straight / "final.json").read_text())
    # 0.5 updates per env step: 115 owed, 11 host calls of 10
    assert final["offline_steps"] == 40 and final["online_env_steps"] == [230] and final["steps"] == 150
    evals = [json.loads((straight / "evals" / f"step_{s:08d}.json").read_text()) for s in (40, 150)]
    assert "phase" not in evals[0] and evals[1]["phase"] == "online" and evals[1]["env_steps"] == [230]
    steps = [int(r.split(",")[0]) for r in (straight / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [20, 40, 60, 80, 100, 120, 140]  # one curve across the switch at 40
    from steerflow.train.checkpoint import _read

    online = _read(straight)["online"]
    assert int(online["env_steps"][0]) == 230 and int(np.asarray(online["buffers"]["count"]).sum()) == 230
    from steerflow.report import build_report

    (record,) = [r for r in build_report([straight], None)["records"] if r["kind"] == "task"]  # listed, finished
    assert record["steps"] == 150 and record["final_success"] == final["final_success"]

    run = trainer.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke",
                          train_overrides={**TINY, **ONLINE, "online_steps": "230", "online_ratio": "0.5",
                                           "updates_per_env_step": "0.5"})
    real_save = loop.save_checkpoint

    def save_then_die(run_dir, states, keys, step, online=None):
        real_save(run_dir, states, keys, step, online=online)
        if online is not None:
            raise KeyboardInterrupt  # killed right after the online phase's first checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(run, tmp_path / "killed", quiet=True)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    at_kill = _read(tmp_path / "killed")["online"]
    assert int(at_kill["env_steps"][0]) == 200 and int(at_kill["round"]) == 1
    resumed = trainer.train(run, tmp_path / "killed", resume=True, quiet=True)
    a = (straight / "checkpoints" / "latest.msgpack").read_bytes()
    b = (tmp_path / "killed" / "checkpoints" / "latest.msgpack").read_bytes()
    assert a == b
    assert (tmp_path / "killed" / "eval.csv").read_text() == (straight / "eval.csv").read_text()
    rows = [r.split(",")[:2] for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()]
    assert rows == [r.split(",")[:2] for r in (straight / "metrics.csv").read_text().splitlines()]
    assert resumed["final_success"] == final["final_success"] and resumed["online_env_steps"] == [230]


def test_from_may_change_the_evaluation_cadence_but_not_what_is_trained(tmp_path):
    """`--from` continues a finished offline run: how often it evaluates, logs and checkpoints may
    differ (they change nothing trained), a training setting may not (named in the error)."""
    from steerflow.train.checkpoint import save_checkpoint
    from steerflow.train.presets import from_spec

    src = tmp_path / "offline"
    stored = trainer.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke",
                             train_overrides={"eval_every": "20"})
    (src / "checkpoints").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"run": dataclasses.asdict(stored)}))
    save_checkpoint(src, {"w": np.zeros(2)}, np.zeros(2, np.uint32), 40)
    online = {"online_steps": "100", "online_ratio": "0.5"}
    ok = from_spec(dataclasses.replace(stored, from_run=str(src), train_overrides={
        **online, "eval_every": "10", "eval_episodes": "5", "checkpoint_every": "30"}))
    assert ok.train_overrides["steps"] == "40" and ok.train_overrides["eval_every"] == "10"
    with pytest.raises(ValueError, match="--train-set batch_size: there \\(not set\\), here 8"):
        from_spec(dataclasses.replace(stored, from_run=str(src),
                                      train_overrides={**online, "eval_every": "20", "batch_size": "8"}))


def test_the_online_study_runs_its_units_through_the_sweep_runner(data_root, tmp_path, monkeypatch, capsys):
    """benchmarks/online.py trains each (agent, task, seed) as a sweep unit of one seed with an
    online phase: done when its env steps are collected (so a second invocation trains nothing),
    its record written from the run directory."""
    import importlib.util
    import os
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("online_study", Path(__file__).parents[1] / "benchmarks" / "online.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    monkeypatch.setattr(study, "HERE", tmp_path)
    (tmp_path / "results").mkdir()
    for name in ("XLA_FLAGS", "MUJOCO_GL", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # the runner sets them for its units
        monkeypatch.setenv(name, os.environ.get(name, ""))
    argv = ["--out", str(tmp_path / "on"), "--agents", "bc-mf", "--seeds", "1", "--preset", "smoke",
            "--offline-steps", "20", "--online-steps", "30", "--eval-every", "20", "--jobs", "1", "--name", "t"]
    study.main(argv)
    assert "1 units: 0 done (skipped), 0 partial (resumed), 1 pending" in capsys.readouterr().out
    record = json.loads(next((tmp_path / "results").glob("t_*.json")).read_text())
    (unit,) = record["units"]
    assert unit["unit"] == "bc-mf-cube-single-task2-s1" and unit["offline_steps"] == 20
    assert unit["online_env_steps"] >= 30 and not record["unfinished_units"]
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["units"][0]["online_steps"] == 30 and manifest["state"][unit["unit"]]["event"] == "done"
    final = tmp_path / "on" / "runs" / unit["unit"] / "final.json"
    stamp = final.stat().st_mtime_ns
    study.main(argv)  # recorded: nothing is started
    assert "units:" not in capsys.readouterr().out and final.stat().st_mtime_ns == stamp
    (tmp_path / "results" / "t_cpu.json").unlink()  # a run directory that is done is skipped by the runner
    study.main(argv)
    assert "1 units: 1 done (skipped)" in capsys.readouterr().out and final.stat().st_mtime_ns == stamp
