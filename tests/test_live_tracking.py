"""`steerflow train --log tensorboard,wandb`: TensorBoard and W&B (offline) receive the metrics rows
and evaluations while the run is going, a resumed run holds each step once in both, and a
tracker that lacks the record gets it replayed (`steerflow.tracking`)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wandb_offline
from steerflow import tracking

# a long smoke run, stopped by the test: a row every 1000 steps (~0.5 s here), an evaluation
# (2 episodes) every 2000
LONG = ["train", "--agent", "bc-mf", "--task", "cube-single-task2", "--preset", "smoke",
        "--train-set", "steps=1000000", "log_every=1000", "eval_every=2000", "checkpoint_every=1000000"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The training processes' environment: a tiny dataset generated once, a JAX compilation cache
    shared by them (only the first one compiles), WANDB_MODE unset (the default: offline)."""
    from steerflow.data.ogbench_gen import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset("cube-single", episodes=3, seed=0, root=root, show_progress=False, episode_steps=101)
    env = {**os.environ, "STEERFLOW_DATA": str(root), "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    env.pop("WANDB_MODE", None)
    return env


def wait_for(check, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def csv_steps(path: Path, column: str = "mf_loss") -> dict[int, float]:
    """{step: value} of a CSV file's complete lines (the run may be writing the last one)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    complete = [line for line in lines if line.endswith("\n")]
    return {int(r["step"]): float(r[column]) for r in csv.DictReader(complete)}


def scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def stop(proc) -> str:
    """SIGINT to the training process; it stops after its host call with a checkpoint (exit 130)."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    return err


def wandb_run(run_dir: Path) -> dict:
    """The run's one offline W&B run (`tests/wandb_offline.py`), its history as a list of rows."""
    (path,) = run_dir.glob("wandb/wandb/offline-run-*/run-*.wandb")
    record = wandb_offline.read_run(path)
    return {**record, "history": [row for _, row in record["history"]]}


def start(out: Path, kinds: str, env: dict):
    return subprocess.Popen([sys.executable, "-m", "steerflow.cli", *LONG, "--out", str(out), "--log", kinds],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_rows(out: Path, proc) -> tuple[dict, dict]:
    """The run's `metrics.csv` and `eval.csv` once they hold 3 log points and an evaluation."""
    wait_for(lambda: csv_steps(out / "eval.csv", "success") and len(csv_steps(out / "metrics.csv")) >= 3,
             120, "an evaluation and 3 log points", proc)
    return csv_steps(out / "metrics.csv"), csv_steps(out / "eval.csv", "success")


def test_tensorboard_shows_the_rows_and_evaluations_while_the_run_is_going(env, tmp_path):
    out = tmp_path / "run"
    proc = start(out, "tensorboard", env)
    try:
        written, evals = wait_for_rows(out, proc)
        time.sleep(1)  # the events follow each CSV write at once (a row is ~150 bytes: no buffer fills)
        live = dict(scalars(out / "tensorboard", "train/mf_loss/seed0"))
        live_eval = dict(scalars(out / "tensorboard", "eval/mean"))
        assert proc.poll() is None, "the run ended before the events were read"
    finally:
        if proc.poll() is None:
            stop(proc)
    assert set(written) <= set(live) and all(live[s] == pytest.approx(v, rel=1e-6) for s, v in written.items())
    assert set(evals) <= set(live_eval) and all(live_eval[s] == pytest.approx(v) for s, v in evals.items())
    # stopped cleanly: every row written before the stop is in the event file, once
    assert [s for s, _ in scalars(out / "tensorboard", "train/mf_loss/seed0")] == sorted(csv_steps(out / "metrics.csv"))
    assert scalars(out / "tensorboard", "train/steps_per_s/seed0")
    assert (out / "checkpoints" / "latest.msgpack").exists()


@pytest.mark.slow
def test_wandb_offline_run_receives_the_rows_as_they_are_written(env, tmp_path):
    out = tmp_path / "run"
    proc = start(out, "wandb", env)
    try:
        written, evals = wait_for_rows(out, proc)
        time.sleep(2.5)  # the offline file is flushed every second
        live = wandb_run(out)
        assert proc.poll() is None, "the run ended before its W&B file was read"
    finally:
        if proc.poll() is None:
            stop(proc)
    rows = {r["_step"]: r for r in live["history"]}
    last = max(written)  # a step's row is committed when a later step is logged
    assert all(rows[s]["train/mf_loss/seed0"] == v for s, v in written.items() if s != last)
    assert all(rows[s]["eval/mean"] == v for s, v in evals.items() if s != last)
    assert live["run_id"] == (out / "wandb" / "run_id").read_text() and live["display_name"] == "run"
    config = live["config"]
    assert config["train_config"]["steps"] == 1000000 and config["commit"] and config["name"] == "run"
    final = wandb_run(out)  # stopped cleanly: the run was finished with every row written before the stop
    assert [r["_step"] for r in final["history"]] == sorted(csv_steps(out / "metrics.csv"))


RESUME = r"""
import sys
from pathlib import Path
from steerflow import train as trainer
from steerflow.train import loop

out, phase = Path(sys.argv[1]), sys.argv[2]
run = trainer.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke",
                      train_overrides={"log_every": "10"})
if phase == "kill":
    real = loop.save_checkpoint

    def die_at_40(run_dir, states, keys, step, **kwargs):
        if step == 40:  # killed after the rows and the evaluation of steps 30-40, before their checkpoint
            raise KeyboardInterrupt
        real(run_dir, states, keys, step, **kwargs)

    loop.save_checkpoint = die_at_40
    try:
        trainer.train(run, out, quiet=True, log=["csv", "tensorboard", "wandb"])
    except KeyboardInterrupt:
        pass
else:
    trainer.train(run, out, resume=True, quiet=True, log=["csv", "tensorboard", "wandb"])
"""


@pytest.mark.slow
def test_a_resumed_run_holds_each_step_once_in_tensorboard_and_wandb(env, tmp_path):
    """Killed after logging steps 30 and 40 with its checkpoint at step 20, then resumed: TensorBoard
    purges the first event file's steps after 20 (a SessionLog.START at step 21 in the new file);
    W&B's offline run (same id) is replaced by one that replays steps 10-20 and streams 30-40."""
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-c", RESUME, str(out), "kill"], env=env, check=True, capture_output=True)
    run_id = (out / "wandb" / "run_id").read_text()
    assert [s for s, _ in scalars(out / "tensorboard", "train/mf_loss/seed0")] == [10, 20, 30, 40]
    assert [r["_step"] for r in wandb_run(out)["history"]] == [10, 20, 30, 40]

    subprocess.run([sys.executable, "-c", RESUME, str(out), "resume"], env=env, check=True, capture_output=True)
    written, final = csv_steps(out / "metrics.csv"), json.loads((out / "final.json").read_text())
    assert sorted(written) == [10, 20, 30, 40]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert scalars(out / "tensorboard", "train/mf_loss/seed0") == [(s, pytest.approx(v)) for s, v in sorted(written.items())]
    assert scalars(out / "tensorboard", "eval/mean") == [(40, pytest.approx(final["mean"]))]
    record = wandb_run(out)  # the one offline run (a second would fail the unpacking)
    assert record["run_id"] == run_id == (out / "wandb" / "run_id").read_text()
    assert [r["_step"] for r in record["history"]] == [10, 20, 30, 40]
    assert [r["train/mf_loss/seed0"] for r in record["history"]] == [written[s] for s in (10, 20, 30, 40)]
    assert record["history"][-1]["eval/mean"] == final["mean"]


@pytest.mark.slow
def test_the_online_phase_streams_its_rows_evaluations_and_env_steps(env, tmp_path, monkeypatch):
    """40 offline steps, then 20 env steps online at one update per env step (two host calls, to
    step 60): one curve across the switch, and the online evaluation with its env steps."""
    from steerflow import train as trainer

    monkeypatch.setenv("STEERFLOW_DATA", env["STEERFLOW_DATA"])
    run = trainer.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke", train_overrides={
        "online_steps": "20", "updates_per_env_step": "1", "online_envs": "1", "eval_episodes": "1"})
    trainer.train(run, tmp_path / "run", quiet=True, log=["csv", "tensorboard"])
    logdir = tmp_path / "run" / "tensorboard"
    assert [s for s, _ in scalars(logdir, "train/mf_loss/seed0")] == sorted(csv_steps(tmp_path / "run" / "metrics.csv")) == [20, 40, 60]
    assert [s for s, _ in scalars(logdir, "eval/mean")] == [40, 60]
    assert scalars(logdir, "online/env_steps/seed0") == [(60, 20.0)]


def test_a_tracker_without_the_record_gets_it_replayed_up_to_the_start_step(tmp_path):
    """A run resumed (or continued `--from`) at step 20 with a tracker it did not have: its
    TensorBoard starts with the record's steps up to 20, under the tags the export uses."""
    run_dir = tmp_path / "run"
    (run_dir / "evals").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("step,seed,steps_per_s,mf_loss\n10,0,,1.5\n20,0,99.0,1.25\n30,0,98.0,1.0\n")
    for step in (20, 30):
        (run_dir / "evals" / f"step_{step:08d}.json").write_text(json.dumps(
            {"step": step, "seeds": [0], "success": [0.5], "mean": 0.5, "phase": "online", "env_steps": [7]}))
    trackers = tracking.Trackers(run_dir, ["csv", "tensorboard"], step=20)
    trackers.train(30, [{"step": 30, "seed": 0, "steps_per_s": 98.0, "mf_loss": 1.0}])
    trackers.close()
    logdir = run_dir / "tensorboard"
    assert scalars(logdir, "train/mf_loss/seed0") == [(10, 1.5), (20, 1.25), (30, 1.0)]
    assert scalars(logdir, "train/steps_per_s/seed0") == [(20, 99.0), (30, 98.0)]
    assert scalars(logdir, "eval/success/seed0") == [(20, 0.5)] and scalars(logdir, "online/env_steps/seed0") == [(20, 7.0)]
    assert set(tracking.read_record(run_dir)["scalars"][20]) == {
        "train/mf_loss/seed0", "train/steps_per_s/seed0", "eval/success/seed0", "eval/mean", "online/env_steps/seed0"}


def test_an_evaluation_in_an_env_of_imported_demos_sends_success_and_the_held_out_mse():
    record = {"step": 20, "seeds": [0, 3], "success": [0.5, 1.0], "mean": 0.75, "val_action_mse": [0.2, 0.1],
              "scored_on": "val"}
    assert tracking.eval_scalars(record) == {
        "eval/success/seed0": 0.5, "eval/success/seed3": 1.0, "eval/mean": 0.75,
        "eval/val_action_mse/seed0": 0.2, "eval/val_action_mse/seed3": 0.1}
    alone = {"step": 20, "seeds": [0], "metric": "val_action_mse", "val_action_mse": [0.2], "mean": 0.2, "success": None}
    assert tracking.eval_scalars(alone) == {"eval/val_action_mse/seed0": 0.2, "eval/mean": 0.2}
