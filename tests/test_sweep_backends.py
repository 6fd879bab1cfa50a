"""`steerflow sweep --backend ray|slurm` on the real engines: a local Ray cluster (2 CPUs on
127.0.0.1, one per module) and submitit's LocalExecutor. The same smoke units (bc-mf, one seed,
three tasks) run first on the local backend; every other backend must end each unit with the same
final success and a bitwise-identical final checkpoint, also when a unit's Ray worker is killed
mid-unit (the retry resumes from the unit's checkpoint) and when the sweep's driver is killed and
the sweep run again (only the unfinished units run)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import wandb_offline
from steerflow import cli, sweep

pytestmark = pytest.mark.slow

TASKS = [f"cube-single-task{i}" for i in (1, 2, 3)]  # two run at once on 2 CPUs, so one is left when one ends


def sweep_args(out, tasks=TASKS, *extra):
    return ["sweep", "--out", str(out), "--agents", "bc-mf", "--tasks", ",".join(tasks), "--seeds", "0",
            "--preset", "smoke", *extra]


def units_of(out):
    return [sweep.Unit.from_record(r) for r in json.loads((out / "manifest.json").read_text())["units"]]


def result(out, unit):
    """(final success, final checkpoint bytes) of a finished unit."""
    run_dir = out / unit.run_dir
    return (json.loads((run_dir / "final.json").read_text())["final_success"],
            (run_dir / "checkpoints" / "latest.msgpack").read_bytes())


@pytest.fixture(scope="module")
def unit_env(data_root, tmp_path_factory):
    """Environment every unit process inherits (the Ray workers too: the cluster starts after it):
    a compilation cache shared by the units, so only the first one compiles."""
    mp = pytest.MonkeyPatch()
    mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def reference(unit_env, tmp_path_factory):
    """The three units on the local backend: {task: (final success, checkpoint bytes)}."""
    out = tmp_path_factory.mktemp("local") / "sw"
    cli.main(sweep_args(out, TASKS, "--jobs", "2"))
    return {u.task: result(out, u) for u in units_of(out)}


@pytest.fixture(scope="module")
def ray_address(unit_env):
    """A local Ray cluster with 2 CPUs on 127.0.0.1, shut down (all its processes) afterwards. The
    dashboard serves Ray's state API (worker pids); metrics collection stays off (its agent alone
    can outlast the raylet's start-up timeout on a loaded machine)."""
    import ray

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_enable_metrics_collection", "0")
    # Ray's memory monitor kills workers when the *machine* is at 95% memory, which other jobs on a
    # shared machine cause: the retries it triggers are not the ones under test
    mp.setenv("RAY_memory_monitor_refresh_ms", "0")
    # Ray runs its workers (and so the units' training processes) at nice 15: beside the other test
    # worker of `make test` they would get a sliver of a core and take ten times as long
    mp.setenv("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=0, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        mp.undo()


def running_tasks(name=None):
    from ray.util.state import list_tasks

    filters = [("state", "=", "RUNNING")] + ([("name", "=", name)] if name else [])
    return list_tasks(filters=filters)


def wait_for(condition, timeout_s, what, interval_s=0.02):
    # Ray state-API polls use a longer interval: each one is an RPC, and on a loaded 1-2 core
    # runner polling every 20 ms starves the very unit being waited for
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return value


def test_driver_killed_midway_and_run_again_finishes_only_the_rest(reference, ray_address, tmp_path, capsys):
    out = tmp_path / "sw"
    args = sweep_args(out, TASKS, "--backend", "ray", "--unit-cpus", "1")
    driver = subprocess.Popen([sys.executable, "-m", "steerflow.cli", *args, "--address", ray_address],
                              stdout=open(tmp_path / "driver.log", "wb"), stderr=subprocess.STDOUT)
    def recorded(event):  # the manifest's state, which the driver updates as units end
        try:
            state = json.loads((out / "manifest.json").read_text()).get("state", {})
        except (OSError, ValueError):
            return set()
        return {uid for uid, s in state.items() if s["event"] == event}

    try:
        wait_for(lambda: recorded("done"), 900, "the driver to record a first finished unit", interval_s=0.2)
    finally:
        driver.kill()
        driver.wait()
    units = units_of(out)
    done = {u.id: (out / u.run_dir / "final.json").stat().st_mtime_ns for u in units
            if sweep.unit_status(out, u) == "done"}
    assert 1 <= len(done) < len(units), (done, (tmp_path / "driver.log").read_text()[-2000:])
    assert recorded("done") <= set(done) and recorded("submitted") | recorded("done") == {u.id for u in units}
    # Ray stops a dead driver's tasks; their training processes die with their workers
    wait_for(lambda: not running_tasks(), 120, "the dead driver's tasks to stop", interval_s=0.5)
    capsys.readouterr()
    cli.main(["sweep", "--out", str(out), "--dry-run"])
    assert "[ray: submitted" in capsys.readouterr().out  # the stale state a dead driver leaves

    cli.main(args)  # the same sweep again, in this process (connected to the cluster already)
    text = capsys.readouterr().out
    assert f"{len(units)} units: {len(done)} done (skipped)" in text
    assert all(sweep.unit_status(out, u) == "done" for u in units)
    assert {u.id: (out / u.run_dir / "final.json").stat().st_mtime_ns for u in units if u.id in done} == done
    for u in units:
        assert result(out, u) == reference[u.task], u.id


def test_a_killed_worker_is_retried_and_the_unit_resumes(reference, ray_address, tmp_path, capsys):
    out = tmp_path / "sw"
    task = TASKS[0]
    uid = sweep.unit_id("bc-mf", task, {})
    run_dir = out / "runs" / uid
    killed = {}

    def kill_worker_mid_unit():
        # the unit's worker, from Ray's state API; killed once the unit has checkpointed (step 20 of
        # 40) and before it has finished (its final evaluation takes seconds)
        pid = wait_for(lambda: (running_tasks(uid) or [None])[0], 300, "the unit's task", interval_s=0.5).worker_pid
        wait_for(lambda: (run_dir / "checkpoints" / "latest.msgpack").exists(), 600, "the first checkpoint")
        killed["before_final"] = not (run_dir / "final.json").exists()
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    killer = threading.Thread(target=kill_worker_mid_unit, daemon=True)
    killer.start()
    cli.main(sweep_args(out, [task], "--backend", "ray", "--max-retries", "2"))
    killer.join(10)
    assert killed.get("before_final"), killed
    unit = units_of(out)[0]
    assert sweep.unit_status(out, unit) == "done"
    log = (out / unit.log).read_text()
    assert log.count("\n=== ") == 2 and f"pid {killed['pid']} " in log  # two attempts, the first one killed
    assert "resuming" in log and "from step 20" in log
    assert result(out, unit) == reference[task]
    assert "[done]" in capsys.readouterr().out


def test_submitit_job_array_requeues_a_preempted_unit_and_tracks_both(reference, tmp_path, capsys):
    import psutil
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sw"
    runs = tmp_path / "shared"
    first = runs / sweep.unit_id("bc-mf", TASKS[0], {})
    preempted = {}

    def preempt_first_unit():
        # SLURM's preemption notice (USR2, submitit's default) to the job process of the first unit:
        # the parent of the training process that writes into its run directory
        def job_process():
            for p in psutil.Process().children(recursive=True):
                try:
                    if "train" in p.cmdline() and str(first) in p.cmdline():
                        return p.parent()
                except psutil.Error:
                    pass
        job = wait_for(job_process, 300, "the first unit's job")
        wait_for(lambda: (first / "checkpoints" / "latest.msgpack").exists(), 600, "the first checkpoint")
        preempted["before_final"] = not (first / "final.json").exists()
        job.send_signal(signal.SIGUSR2)

    thread = threading.Thread(target=preempt_first_unit, daemon=True)
    thread.start()
    # the driver in a child process: under pytest's output capture an in-process submitit driver
    # ends with "I/O operation on closed file" (it passes with `pytest -s`)
    driver = subprocess.run([sys.executable, "-m", "steerflow.cli", *sweep_args(
        out, TASKS[:2], "--backend", "slurm", "--slurm-cluster", "local", "--runs-root", str(runs),
        "--log", "csv,tensorboard,wandb")], capture_output=True, text=True)
    thread.join(10)
    assert driver.returncode == 0, driver.stderr[-2000:]
    assert "2 units: 0 done (skipped), 0 partial (resumed), 2 pending" in driver.stdout
    units = units_of(out)
    assert all(u.run_dir == f"{runs}/{u.id}" for u in units) and not (out / "runs").exists()
    for u in units:
        assert result(out, u) == reference[u.task], u.id
    assert list((runs / "submitit").glob("*_submitted.pkl"))  # submitit's own job folder
    assert preempted.get("before_final"), preempted
    log = (out / units[0].log).read_text()  # requeued once, and resumed from its checkpoint
    assert log.count("\n=== ") == 2 and "resuming" in log

    unit = units[0]
    run_dir = runs / unit.id
    final = json.loads((run_dir / "final.json").read_text())
    commit = json.loads((run_dir / "run_info.json").read_text())["commit"]
    steps = sorted({int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]})
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/mean")] == [(40, final["mean"])]
    assert [e.step for e in events.Scalars("train/mf_loss/seed0")] == steps
    config_text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config_text)["train_config"]["steps"] == 40 and commit in config_text

    (path,) = run_dir.glob("wandb/wandb/offline-run-*/run-*.wandb")
    record = wandb_offline.read_run(path)
    assert record["run_group"] == "sw" and record["display_name"] == unit.id
    config = record["config"]
    assert config["commit"] == commit and config["train_config"]["steps"] == 40
    history = dict(record["history"])
    assert history[40]["eval/mean"] == final["mean"] and sorted(k for k in history if k) == steps
