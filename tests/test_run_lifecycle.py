"""A run's life beyond the happy path: SIGINT/SIGTERM during training (checkpoint at the current
step, one line saying how to resume, 130/143, bit-identical after the resume) and during data
generation (no temporary directory, no traceback, with 1 and 2 workers); losses that become
non-finite (stopped, last good checkpoint kept, marked failed, left out of `report`); `--resume`
that extends a run; the evaluation progress bar; steps/s without compilation; output files (LF
line endings, the umask's modes).

The subprocess tests are marked `slow` (`make test` runs them, `make test-fast` does not)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from steerflow import cli
from steerflow import train as trainer
from steerflow.train import loop  # the loop looks its helpers up in its own module
from steerflow.errors import Interrupted, TrainingDiverged

SMOKE = ["--task", "cube-single-task2", "--preset", "smoke"]  # 3+1 episodes of 101 steps


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("STEERFLOW_DATA", str(root))
    from steerflow.data.ogbench_gen import generate_dataset

    generate_dataset("cube-single", episodes=3, seed=0, root=root, show_progress=False, episode_steps=101)
    yield root
    mp.undo()


def _checkpoint_step(run_dir: Path) -> int:
    from flax import serialization

    return int(serialization.msgpack_restore((run_dir / "checkpoints" / "latest.msgpack").read_bytes())["step"])


def _steerflow(*args) -> list[str]:
    return [sys.executable, "-m", "steerflow.cli", *map(str, args)]


# ------------------------------------------------------------------------------------ training signals

LONG = ["train", "--agent", "bc-mf", *SMOKE, "--steps", "2000", "--train-set", "eval_every=2000",
        "checkpoint_every=1000"]


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_steerflow(*LONG, "--out", out), check=True, capture_output=True, timeout=600)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_current_step_and_the_resume_is_bit_identical(straight, data_root, tmp_path,
                                                                                signum):
    out = tmp_path / "run"
    proc = subprocess.Popen(_steerflow(*LONG, "--out", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # training has started: the first log row (step 20) is written
    # SIGINT to the group, as a terminal's Ctrl-C; SIGTERM to the process, as `kill` does
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    (line,) = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("steerflow:")]
    step = _checkpoint_step(out)
    assert 20 <= step < 2000 and step % 10 == 0 and f"at step {step}/2000" in line
    assert "--resume" in line and str(out) in line and signal.Signals(signum).name in line
    resumed = subprocess.run(_steerflow(*LONG, "--out", out, "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} from step {step}" in resumed.stdout
    assert (out / "checkpoints" / "latest.msgpack").read_bytes() == \
        (straight / "checkpoints" / "latest.msgpack").read_bytes()
    rows = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == list(range(20, 2001, 20))  # no row lost or repeated around the interrupt


def test_an_interrupt_during_an_evaluation_is_resumed_with_that_evaluation(data_root, tmp_path, monkeypatch):
    """The signal arrives while the step-40 evaluation runs: it stops, the checkpoint is at 40, and
    the resume runs the evaluation it cut short before anything else."""
    run = trainer.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke")
    real = trainer.evaluate_states

    def signal_during_eval(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: recorded, not raised
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_states", signal_during_eval)
    with pytest.raises(Interrupted) as err:
        trainer.train(run, tmp_path / "run", quiet=True)
    assert err.value.step == 40 and err.value.exit_code == 130
    assert _checkpoint_step(tmp_path / "run") == 40
    assert not (tmp_path / "run" / "evals" / "step_00000040.json").exists()
    monkeypatch.setattr(loop, "evaluate_states", real)
    final = trainer.train(run, tmp_path / "run", resume=True, quiet=True)
    assert final["steps"] == 40 and (tmp_path / "run" / "evals" / "step_00000040.json").exists()


# ------------------------------------------------------------------------------------ data generation

@pytest.mark.slow
@pytest.mark.parametrize("workers, signum", [(1, signal.SIGINT), (2, signal.SIGINT), (2, signal.SIGTERM)],
                         ids=["1 worker SIGINT", "2 workers SIGINT", "2 workers SIGTERM"])
def test_an_interrupted_generation_leaves_nothing(tmp_path, workers, signum):
    env = {**os.environ, "STEERFLOW_DATA": str(tmp_path / "data")}
    proc = subprocess.Popen(_steerflow("data", "generate", "cube-single", "--episodes", "40", "--workers", workers),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "data").glob(".tmp-*")):
        time.sleep(0.05)
    time.sleep(4 if workers > 1 else 1)  # the pool's workers are up and generating
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "Error" not in err, err
    assert "steerflow: interrupted" in err
    assert not list((tmp_path / "data").iterdir())  # no temporary and no partial dataset directory


# ------------------------------------------------------------------------------------ non-finite losses

def test_non_finite_losses_stop_the_run_keep_the_last_good_checkpoint_and_mark_it(data_root, tmp_path,
                                                                                    monkeypatch, capsys):
    """NaN appears in the losses of the third host call (steps 21-30), after the step-20
    checkpoint: the run stops there, exits 1, keeps the step-20 checkpoint and `report` lists it."""
    real = trainer.make_train_call

    def poisoned(agent, batch_size, updates_per_call):
        call, calls = real(agent, batch_size, updates_per_call), []

        def train_call(states, keys, ds):
            states, keys, metrics = call(states, keys, ds)
            calls.append(1)
            if len(calls) >= 3:
                metrics = {k: v * np.nan for k, v in metrics.items()}
            return states, keys, metrics

        return train_call

    monkeypatch.setattr(loop, "make_train_call", poisoned)
    out = tmp_path / "runs" / "diverged"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "mf_loss=nan" in err and "up to step 30" in err and "last good checkpoint (step 20)" in err
    assert _checkpoint_step(out) == 20 and not (out / "final.json").exists()
    failed = json.loads((out / "failed.json").read_text())
    assert failed["step"] == 30 and failed["losses"]["mf_loss"] == ["nan"]
    monkeypatch.setattr(loop, "make_train_call", real)
    from steerflow.report import build_report

    result = build_report([tmp_path / "runs"], None)
    assert not result["records"] and "failed (diverged: non-finite mf_loss at step 30)" in result["markdown"]


def test_a_real_divergence_is_caught(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--agent", "lps", *SMOKE, "--out", str(out), "--set", "learning_rate=1e30"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "training diverged" in err and "_loss=nan" in err
    assert (out / "failed.json").exists() and not (out / "checkpoints").exists()


# ------------------------------------------------------------------------------------ resume, eval, outputs

def test_resume_with_more_steps_extends_the_run_and_says_so(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out)])
    capsys.readouterr()
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out), "--steps", "60", "--resume"])
    printed = capsys.readouterr().out
    assert f"extending {out} from 40 to 60 steps" in printed
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 60 and _checkpoint_step(out) == 60
    assert json.loads((out / "config.json").read_text())["train_config"]["steps"] == 60
    # the extended run resumes as itself: the same flags again (with --steps 60) are accepted
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out), "--steps", "60", "--resume"])


def test_a_wall_clock_budget_stops_evaluates_and_keeps_the_step_reached(data_root, tmp_path):
    """`--train-set max_wall_s=S`: the loop stops after the first host call past the deadline,
    evaluates and checkpoints that step and records it in final.json; a `--resume` with another
    budget (a process's own setting) continues to the bit-identical end of a run without one."""
    straight = tmp_path / "straight"
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(straight)])
    out = tmp_path / "run"
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out), "--train-set", "max_wall_s=1e-9"])
    final = json.loads((out / "final.json").read_text())
    assert (final["steps"], final["stopped"], final["target_steps"]) == (10, "max_wall_s", 40)
    assert _checkpoint_step(out) == 10 and (out / "evals" / "step_00000010.json").exists()
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out), "--resume"])
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 40 and "stopped" not in final
    assert (out / "checkpoints" / "latest.msgpack").read_bytes() == \
        (straight / "checkpoints" / "latest.msgpack").read_bytes()
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(tmp_path / "bad"), "--train-set", "max_wall_s=-1"])
    assert err.value.code == 2


def test_eval_shows_progress_and_files_are_lf_and_follow_the_umask(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(out)])
        cli.main(["eval", str(out), "--episodes", "3", "--workers", "0"])
        cli.main(["report", str(out), "--out", str(tmp_path / "report")])
    finally:
        os.umask(old)
    err = capsys.readouterr().err
    assert "eval run step 40" in err and "success so far" in err and "3/3" in err  # episodes done, success, ETA
    assert "eval at step 40" in err  # the in-training evaluation has its bar too
    for name in ("metrics.csv", "eval.csv"):
        assert b"\r\n" not in (out / name).read_bytes(), name
    written = [out / "config.json", out / "final.json", out / "evals" / "step_00000040.json",
               out / "checkpoints" / "latest.msgpack", tmp_path / "report" / "records.json",
               *sorted((tmp_path / "report").glob("*.png")), out / "eval.csv"]
    assert len(written) >= 7
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_eval_set_changes_only_act_only_fields_and_records_them(data_root, tmp_path, capsys):
    """`steerflow eval RUN --set select=4` scores LPS with inference-time selection on the trained
    checkpoint, in a record of its own; a field that shapes the networks, or an agent with no
    act-only fields, is refused (exit 2) naming the key."""
    out = tmp_path / "lps"
    cli.main(["train", "--agent", "lps", *SMOKE, "--out", str(out)])
    cli.main(["eval", str(out), "--episodes", "2", "--workers", "0", "--set", "select=4", "select_sigma=0.5"])
    record = json.loads((out / "evals" / "manual_step_00000040_ep2_select=4_select_sigma=0.5.json").read_text())
    assert record["overrides"] == {"select": "4", "select_sigma": "0.5"} and len(record["success"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["overrides"] == record["overrides"]
    for run, bad, named in ((out, "critic.hidden=[8]", "--set critic.hidden: not an act-only field of lps"),
                            (out, "select=-1", "select and select_sigma must be ≥ 0"),
                            (out, "select", "expected KEY=VALUE")):
        with pytest.raises(SystemExit) as err:
            cli.main(["eval", str(run), "--episodes", "2", "--workers", "0", "--set", bad])
        assert err.value.code == 2 and named in capsys.readouterr().err, bad


def test_steps_per_second_leaves_out_compilation(data_root, tmp_path, monkeypatch):
    """The first host call (compilation) is slowed by 2 s: the first logged steps/s must not see it."""
    real = trainer.make_train_call

    def slow_first(agent, batch_size, updates_per_call):
        call, calls = real(agent, batch_size, updates_per_call), []

        def train_call(states, keys, ds):
            if not calls:
                time.sleep(2.0)
            calls.append(1)
            return call(states, keys, ds)

        return train_call

    monkeypatch.setattr(loop, "make_train_call", slow_first)
    run = trainer.RunSpec(agent="bc-mf", task="cube-single-task2", seeds=[0], preset="smoke")
    trainer.train(run, tmp_path / "run", quiet=True)
    first = float((tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].split(",")[2])
    assert first > 20 / 2.0  # with the 2 s counted, 20 steps could not exceed 10 steps/s


def test_a_smoke_run_from_nothing_makes_its_own_tiny_dataset(tmp_path, monkeypatch, capsys):
    """`--preset smoke` with an empty data cache generates 3+1 episodes of 101 steps, not the
    1000+100 full-length ones, and the whole run takes seconds (bound generous for a busy CPU)."""
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))
    t0 = time.perf_counter()
    cli.main(["train", "--agent", "bc-mf", *SMOKE, "--out", str(tmp_path / "run")])
    elapsed = time.perf_counter() - t0
    (made,) = [p.name for p in (tmp_path / "data").iterdir()]
    assert made.startswith("cube-single-play-e3-t101-s0")
    meta = json.loads((tmp_path / "data" / made / "meta.json").read_text())
    assert (meta["episodes"], meta["val_episodes"], meta["episode_steps"]) == (3, 1, 101)
    assert "generating 3+1 episodes" in capsys.readouterr().out
    assert elapsed < 120, elapsed  # ~20 s on one busy core; the 1000+100-episode default would take ~20 min
