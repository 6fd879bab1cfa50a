"""End to end on a tiny locally generated OGBench dataset in the real cube-single env:
CLI training of both agents, resume after a kill, evaluation, worker-process env pool, and the
errors a user meets first."""

import dataclasses
import json

import numpy as np
import pytest

from steerflow import cli, train as trainer
from steerflow.train import loop  # the loop looks its helpers up in its own module
from steerflow.agents import AGENTS
from steerflow.data.tasks import parse_task
from steerflow.envs.pool import EnvPool, run_episodes

TINY = ["--train-set", "dataset_episodes=3", "dataset_episode_steps=101"]


@pytest.mark.parametrize("agent", ["lps", "bc-mf"])
def test_cli_smoke_run_writes_a_complete_run_directory(data_root, tmp_path, agent, capsys):
    out = tmp_path / agent
    cli.main(["train", "--agent", agent, "--task", "cube-single-task2", "--preset", "smoke", "--seeds", "0,1",
              "--out", str(out), *TINY])
    assert "final success" in capsys.readouterr().out
    final = json.loads((out / "final.json").read_text())
    assert final["agent"] == agent and final["seeds"] == [0, 1] and len(final["final_success"]) == 2
    assert all(0.0 <= s <= 1.0 for s in final["final_success"]) and final["steps"] == 40
    for name in ("config.json", "run_info.json", "metrics.csv", "eval.csv", "checkpoints/latest.msgpack",
                 "evals/step_00000040.json"):
        assert (out / name).exists(), name
    info = json.loads((out / "run_info.json").read_text())
    assert info["dataset"]["fingerprint"] and info["versions"]["ogbench"] == "1.2.2" and info["commit"]
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,seed,steps_per_s") and len(rows) == 1 + 2 * 2  # 2 log points x 2 seeds
    records = trainer.evaluate_run(out, episodes=2, workers=0)
    assert records[0]["step"] == 40 and len(records[0]["success"]) == 2
    for rec in (records[0], json.loads((out / "evals" / "step_00000040.json").read_text())):
        # one sub-goal on cube-single: the last state's reward is 0 when solved, -1 when not
        np.testing.assert_allclose(rec["final_reward"], np.array(rec["success"]) - 1, atol=1e-6)


@pytest.mark.parametrize("agent", sorted(set(AGENTS) - {"lps", "bc-mf"}))
def test_every_baseline_trains_and_evaluates_from_the_cli(data_root, tmp_path, agent, capsys):
    """Each baseline through the CLI on tiny real data: train, checkpoint, re-evaluate."""
    out = tmp_path / agent
    cli.main(["train", "--agent", agent, "--task", "cube-single-task2", "--preset", "smoke", "--seeds", "0",
              "--out", str(out), *TINY])
    final = json.loads((out / "final.json").read_text())
    assert final["agent"] == agent and final["steps"] == 40 and 0.0 <= final["final_success"][0] <= 1.0
    capsys.readouterr()
    cli.main(["eval", str(out), "--episodes", "2", "--workers", "0"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["step"] == 40 and len(record["success"]) == 1


def test_resume_after_a_kill_continues_bitwise(data_root, tmp_path, monkeypatch):
    """A run killed after its step-20 checkpoint and resumed ends in the same state as one that
    was never interrupted. The uninterrupted run also evaluates at step 20 and the other does not,
    so evaluating leaves the training state alone (an evaluation that drew from the training keys
    or the sampled batches would change every later update)."""
    data = {"dataset_episodes": "3", "dataset_episode_steps": "101"}
    run = trainer.RunSpec(agent="lps", task="cube-single-task2", seeds=[0], preset="smoke", train_overrides=data)
    evaluated = dataclasses.replace(run, train_overrides={**data, "eval_every": "20"})
    trainer.train(evaluated, tmp_path / "straight", quiet=True)
    assert (tmp_path / "straight" / "evals" / "step_00000020.json").is_file()

    real_save = trainer.save_checkpoint

    def save_then_die(run_dir, states, keys, step):
        real_save(run_dir, states, keys, step)
        raise KeyboardInterrupt  # the process is killed right after its first checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(run, tmp_path / "killed", quiet=True)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    with pytest.raises(FileExistsError, match="--resume"):
        trainer.train(run, tmp_path / "killed", quiet=True)
    trainer.train(run, tmp_path / "killed", resume=True, quiet=True)
    a = (tmp_path / "straight" / "checkpoints" / "latest.msgpack").read_bytes()
    b = (tmp_path / "killed" / "checkpoints" / "latest.msgpack").read_bytes()
    assert a == b
    steps = [int(line.split(",")[0]) for line in
             (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [20, 40]  # no duplicated rows after the resume


def test_worker_pool_matches_in_process_envs():
    """Waves of a 3-env local pool and of a 4-env pool over 2 workers give the same episodes."""
    task = parse_task("cube-single-task1")
    weights = np.random.default_rng(0).normal(size=(28, 25))
    policy = lambda obs: np.tanh(np.asarray(obs) @ weights)  # deterministic in the observation
    with EnvPool(task, 3, workers=0) as local, EnvPool(task, 4, workers=2) as remote:
        a = run_episodes(local, policy, horizon=5, episodes=5, seed=3)
        b = run_episodes(remote, policy, horizon=5, episodes=5, seed=3)
    np.testing.assert_array_equal(a["length"], b["length"])
    np.testing.assert_array_equal(a["success"], b["success"])
    assert np.all(a["length"] == 200)  # this policy never solves the task: the TimeLimit ends it
    np.testing.assert_array_equal(a["final_reward"], b["final_reward"])
    assert np.all(a["final_reward"] == -1)  # cube-single has one sub-goal, left unsolved


def test_a_worker_whose_pool_vanished_ends_quietly():
    """A pool's process killed or interrupted mid-run closes its ends of the pipes without the
    close command: each worker ends with exit code 0, not an EOFError traceback."""
    pool = EnvPool(parse_task("cube-single-task1"), 2, workers=1)
    pool.reset([0, 1])
    pool.conns[0].close()
    pool.procs[0].join(timeout=60)
    assert pool.procs[0].exitcode == 0


def test_a_non_finite_action_chunk_is_refused_before_it_reaches_the_env():
    """run_episodes: MuJoCo takes NaN controls without complaint, so the pool refuses them, naming
    the episode; a NaN in an idle env of the last wave is not an episode's action and passes."""
    task = parse_task("cube-single-task1")

    def policy(obs):
        chunks = np.zeros((len(obs), 25))
        chunks[1, 3] = np.nan
        return chunks

    with EnvPool(task, 2, workers=0) as pool:
        with pytest.raises(FloatingPointError, match="episode 1 .reset seed 300010. at step 0"):
            run_episodes(pool, policy, horizon=5, episodes=2, seed=3)
        out = run_episodes(pool, lambda o: np.where(np.arange(len(o))[:, None] == 1, np.nan, np.zeros((len(o), 25))),
                           horizon=5, episodes=1, seed=3)
    assert out["length"][0] == 200


@pytest.mark.parametrize("args, message", [
    (["--task", "cube-triple-task1"], "unknown domain"),
    (["--task", "cube-single-task9"], "outside 1..5"),
    (["--agent", "sac"], "unknown agent"),
    (["--preset", "huge"], "unknown preset"),
    (["--set", "critic.num_critic=3"], "has no field 'num_critic'"),
    (["--set", "critic.num_critics=two"], "critic.num_critics"),
])
def test_cli_errors_name_the_flag_at_fault(data_root, tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", str(tmp_path / "x"), "--preset", "smoke", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_run_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        trainer.evaluate_run(tmp_path)
