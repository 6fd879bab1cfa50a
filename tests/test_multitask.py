"""Several tasks of one domain in one run (`train.rundir`): one jitted program over task × seed
whose rows sample their own task's rewards and masks (`data.chunks.stack_tasks`), one directory
per task that reads like a single-task run, resumed bit-identically, and the settings it refuses.

Scene tasks: on a 3-episode play dataset their rewards differ (cube-single's are all -1 there), so
a row that read another task's rewards would train another critic."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerflow import cli

SCENE = ["--agent", "lps", "--preset", "smoke", "--seeds", "0,1", "--train-set", "eval_episodes=1"]
TWO = "scene-task2,scene-task4"
# the program vmaps 4 rows where a single-task run vmaps 2: XLA may add a batch in another order
ATOL = 1e-5


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("STEERFLOW_DATA", str(root))
    from steerflow.data.ogbench_gen import generate_dataset

    generate_dataset("scene", episodes=3, seed=0, root=root, show_progress=False, episode_steps=101)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def two(scene_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    cli.main(["train", *SCENE, "--task", TWO, "--out", str(out)])
    return out


def _checkpoint(run_dir):
    from flax import serialization

    return serialization.msgpack_restore((run_dir / "checkpoints" / "latest.msgpack").read_bytes())


def test_a_task_of_a_two_task_run_equals_its_single_task_run(two, scene_root, tmp_path):
    single = tmp_path / "single"
    cli.main(["train", *SCENE, "--task", "scene-task4", "--out", str(single)])
    mine, theirs = _checkpoint(two / "scene-task4"), _checkpoint(single)
    assert int(mine["step"]) == int(theirs["step"]) == 40
    np.testing.assert_array_equal(mine["keys"], theirs["keys"])
    for a, b in zip(jax.tree.leaves(mine["states"]), jax.tree.leaves(theirs["states"])):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    # the other task trained another critic on its own rewards
    other = _checkpoint(two / "scene-task2")["states"]["params"]["critic"]
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(jax.tree.leaves(other), jax.tree.leaves(theirs["states"]["params"]["critic"]))) > 100 * ATOL
    for task in TWO.split(","):
        final = json.loads((two / task / "final.json").read_text())
        assert (final["task"], final["seeds"], final["steps"]) == (task, [0, 1], 40)
        assert json.loads((two / task / "config.json").read_text())["run"]["task"] == task
    assert json.loads((two / "tasks.json").read_text())["tasks"] == TWO.split(",")


def test_report_and_eval_read_each_task_as_a_run(two, scene_root, tmp_path, capsys):
    capsys.readouterr()
    cli.main(["report", str(two), "--out", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert "scene-task2" in printed and "scene-task4" in printed
    cli.main(["eval", str(two / "scene-task2"), "--episodes", "1", "--workers", "0"])


def test_a_stopped_multi_task_run_resumes_bit_identically(two, scene_root, tmp_path):
    out = tmp_path / "run"
    cli.main(["train", *SCENE, "max_wall_s=1e-9", "--task", TWO, "--out", str(out)])
    assert int(_checkpoint(out)["step"]) == 10
    assert json.loads((out / "scene-task2" / "final.json").read_text())["stopped"] == "max_wall_s"
    cli.main(["train", *SCENE, "--task", TWO, "--out", str(out), "--resume"])
    assert (out / "checkpoints" / "latest.msgpack").read_bytes() == (two / "checkpoints" / "latest.msgpack").read_bytes()
    for task in TWO.split(","):
        assert (out / task / "checkpoints" / "latest.msgpack").read_bytes() == \
            (two / task / "checkpoints" / "latest.msgpack").read_bytes()
        # the stop's own evaluation at step 10 stays in the curve; the rest is the straight run's
        assert (out / task / "eval.csv").read_text().endswith((two / task / "eval.csv").read_text().split("\n", 1)[1])


def test_the_sampler_reads_each_rows_own_task():
    from steerflow.data.chunks import build_chunk_dataset, sample_chunks, stack_tasks

    n = 12
    data = {"observations": np.arange(n, dtype=np.float32)[:, None], "actions": np.zeros((n, 1), np.float32),
            "rewards": np.zeros(n, np.float32), "masks": np.ones(n, np.float32),
            "next_observations": np.arange(1, n + 1, dtype=np.float32)[:, None], "terminals": np.zeros(n)}
    ds = build_chunk_dataset(data, horizon=2, discount=1.0)
    per_task = [{"rewards": np.full(n, -float(t), np.float32), "masks": np.full(n, float(t == 1), np.float32)}
                for t in range(3)]
    multi = stack_tasks(ds, per_task)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    batches = jax.vmap(lambda k, t: sample_chunks(multi, k, 5, t))(keys, jnp.arange(3))
    np.testing.assert_array_equal(batches["rewards"], -2.0 * np.arange(3)[:, None] * np.ones((3, 5)))
    np.testing.assert_array_equal(batches["masks"][:, 0], [0, 1, 0])
    single = sample_chunks(ds.replace(rewards=jnp.asarray(per_task[2]["rewards"])), keys[2], 5)
    np.testing.assert_array_equal(single["observations"], batches["observations"][2])


@pytest.mark.parametrize("extra, says", [
    (["--task", "scene-task2,cube-single-task2"], "one domain"),
    (["--task", "scene-task2,scene-task2"], "named twice"),
    (["--task", TWO, "--online-steps", "100"], "--online-steps"),
    (["--task", TWO, "--parallel", "processes"], "--parallel processes"),
    (["--task", "scene-task2,scene-task9"], "scene-task9"),
])
def test_what_a_multi_task_run_cannot_take_is_refused_before_any_work(extra, says, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        cli.main(["train", *SCENE, *extra, "--out", str(out)])
    assert err.value.code == 2 and says in capsys.readouterr().err
    assert not out.exists()
