"""`steerflow sweep`: grid expansion and unit ids, the manifest (idempotent, union), unit status
from run directories, the runner (failures, Ctrl-C), flag errors, and one real two-unit sweep on
a tiny dataset that is then skipped on a re-run and resumed when left partial."""

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from steerflow import cli, sweep

TINY = ["dataset_episodes=3", "dataset_episode_steps=101"]


def ids(units):
    return [u.id for u in units]


def test_grid_is_a_cartesian_product_with_agent_scoped_keys():
    units = sweep.expand(["lps", "bc-mf"], ["cube-single-task1", "cube-single-task2"], [0, 1], "smoke",
                         grid=["learning_rate=1e-3,3e-4", "lps:alpha=1,3,10"],
                         sets=["lps:critic.num_critics=4", "geometry=normal"], train_sets=["steps=20"])
    lps = [u for u in units if u.agent == "lps"]
    bc = [u for u in units if u.agent == "bc-mf"]
    assert len(lps) == 2 * 2 * 3 and len(bc) == 2 * 2
    assert {(u.task, u.grid["learning_rate"], u.grid["alpha"]) for u in lps} == set(itertools.product(
        ["cube-single-task1", "cube-single-task2"], ["1e-3", "3e-4"], ["1", "3", "10"]))
    assert all(set(u.grid) == {"learning_rate"} and "alpha" not in u.overrides for u in bc)
    assert all(u.overrides["critic.num_critics"] == "4" for u in lps)
    assert all("critic.num_critics" not in u.overrides and u.overrides["geometry"] == "normal" for u in bc)
    assert all(u.seeds == [0, 1] and u.train_overrides == {"steps": "20"} and u.steps == 20 for u in units)
    assert len(set(ids(units))) == len(units)
    assert "lps__cube-single-task1__alpha=10,learning_rate=3e-4" in ids(units)
    assert "bc-mf__cube-single-task2__learning_rate=1e-3" in ids(units)
    # ids do not depend on the order of the flags
    again = sweep.expand(["bc-mf", "lps"], ["cube-single-task2", "cube-single-task1"], [0, 1], "smoke",
                         grid=["lps:alpha=1,3,10", "learning_rate=1e-3,3e-4"],
                         sets=["geometry=normal", "lps:critic.num_critics=4"], train_sets=["steps=20"])
    assert sorted(ids(again)) == sorted(ids(units))
    plain = sweep.expand(["bc-mf"], ["cube-single-task2"], [0], "smoke")
    assert ids(plain) == ["bc-mf__cube-single-task2__default"] and plain[0].steps == 40


def test_unit_ids_are_safe_file_names():
    uid = sweep.unit_id("lps", "cube-single-task1", {"*.tag": "a/b c", "critic.rho": "0.5"})
    assert uid == "lps__cube-single-task1__critic.rho=0.5,tag=a_b_c"
    long_a = sweep.unit_id("lps", "cube-single-task1", {f"k{i}": "x" * 20 + "a" for i in range(10)})
    long_b = sweep.unit_id("lps", "cube-single-task1", {f"k{i}": "x" * 20 + "b" for i in range(10)})
    assert len(long_a) <= 150 and long_a != long_b


def sweep_cli(out, *extra):
    return ["sweep", "--out", str(out), "--agents", "lps,bc-mf", "--tasks", "cube-single-task1",
            "--seeds", "0,1", "--preset", "smoke", *extra]


def test_manifest_is_idempotent_and_a_new_grid_adds_units(tmp_path, capsys):
    out = tmp_path / "sw"
    cli.main(sweep_cli(out, "--grid", "lps:alpha=1,3", "--print-commands"))
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 3 and all("--unit" in c for c in commands)
    path = out / "manifest.json"
    first, stamp = path.read_text(), path.stat().st_mtime_ns
    manifest = json.loads(first)
    assert [u["id"] for u in manifest["units"]] == [
        "lps__cube-single-task1__alpha=1", "lps__cube-single-task1__alpha=3", "bc-mf__cube-single-task1__default"]
    unit = manifest["units"][0]
    assert unit["run_dir"] == "runs/lps__cube-single-task1__alpha=1" and unit["seeds"] == [0, 1]
    assert unit["overrides"] == {"alpha": "1"} and unit["preset"] == "smoke" and unit["steps"] == 40
    assert " train " in unit["command"] and "--seeds 0,1" in unit["command"] and "--resume" in unit["command"]

    cli.main(sweep_cli(out, "--grid", "lps:alpha=1,3", "--print-commands"))  # same sweep: no change
    assert path.read_text() == first and path.stat().st_mtime_ns == stamp

    cli.main(sweep_cli(out, "--grid", "lps:alpha=10", "--print-commands"))  # another grid: union
    manifest = json.loads(path.read_text())
    assert [u["id"] for u in manifest["units"]] == [
        "lps__cube-single-task1__alpha=1", "lps__cube-single-task1__alpha=3", "bc-mf__cube-single-task1__default",
        "lps__cube-single-task1__alpha=10"]
    assert len(manifest["sweeps"]) == 2
    capsys.readouterr()

    cli.main(["sweep", "--out", str(out), "--dry-run"])  # no sweep flags: every unit of the manifest
    table = capsys.readouterr().out
    assert "4 units: 0 done, 0 partial, 4 pending" in table and "lps__cube-single-task1__alpha=10" in table

    with pytest.raises(SystemExit) as exit_info:  # same ids, other seeds: refused, manifest kept
        cli.main(sweep_cli(out, "--grid", "lps:alpha=1", "--print-commands", "--seeds", "0,1,2"))
    assert exit_info.value.code == 2 and "already there with other settings" in capsys.readouterr().err
    assert len(json.loads(path.read_text())["units"]) == 4


def test_status_comes_from_the_run_directory(tmp_path):
    units = [sweep.Unit(id=name, agent="lps", task="cube-single-task2", seeds=[0, 1], preset="smoke", steps=40)
             for name in ("pending", "partial", "done", "short")]
    for name in ("partial", "short"):
        (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / name / "checkpoints" / "latest.msgpack").write_bytes(b"x")
    for name, steps in (("done", 40), ("short", 20)):
        (tmp_path / "runs" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs" / name / "final.json").write_text(json.dumps(
            {"steps": steps, "seeds": [0, 1], "mean": 0.25}))
    assert [sweep.unit_status(tmp_path, u) for u in units] == ["pending", "partial", "done", "partial"]
    table = sweep.status_table(tmp_path, units)
    assert "mean success 0.250" in table and "4 units: 1 done, 2 partial, 1 pending" in table


def test_an_online_unit_is_done_when_every_seed_has_its_env_steps(tmp_path):
    """An online run's final.json counts the online updates in `steps` (as many as its episodes
    decide): the unit is done at its offline steps with every seed's env steps collected."""
    unit = sweep.Unit(id="on", agent="lps", task="cube-single-task2", seeds=[0, 1], preset="smoke", steps=40,
                      online_steps=100)
    run_dir = tmp_path / "runs" / "on"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.msgpack").write_bytes(b"x")
    for env_steps, offline, status in (([100, 105], 40, "done"), ([100, 90], 40, "partial"),
                                       ([100, 100], 20, "partial")):
        (run_dir / "final.json").write_text(json.dumps(
            {"steps": offline + 103, "seeds": [0, 1], "offline_steps": offline, "online_env_steps": env_steps}))
        assert sweep.unit_status(tmp_path, unit) == status, (env_steps, offline)
    (run_dir / "final.json").write_text(json.dumps({"steps": 40, "seeds": [0, 1]}))  # the offline phase alone
    assert sweep.unit_status(tmp_path, unit) == "partial"
    online = sweep.expand(["bc-mf"], ["cube-single-task2"], [0], "smoke", train_sets=["online_steps=100"])[0]
    assert (online.steps, online.online_steps) == (40, 100)


def test_runner_reports_failures_and_keeps_going(tmp_path, monkeypatch, capsys):
    units = [sweep.Unit(id=name, agent="lps", task="cube-single-task2", seeds=[0], preset="smoke", steps=40)
             for name in ("fails", "works", "silent")]
    script = {"fails": "import sys; sys.exit(3)", "silent": "pass",
              "works": "import json, pathlib; p = pathlib.Path({d!r}); p.mkdir(parents=True); "
                       "(p / 'final.json').write_text(json.dumps(dict(steps=40, seeds=[0], mean=1.0)))"}

    def fake_command(unit, out):
        return [sys.executable, "-c", script[unit.id].format(d=str(out / unit.run_dir))]

    monkeypatch.setattr(sweep.Unit, "command", fake_command)
    sweep.merge_manifest(tmp_path, units)
    assert sweep.main(tmp_path, jobs=2) == 1
    err = capsys.readouterr().err
    assert "fails: exit code 3" in err and "silent: exit code 0 but no final.json" in err
    assert str(tmp_path / "logs" / "fails.log") in err
    assert [sweep.unit_status(tmp_path, u) for u in units] == ["pending", "done", "pending"]


def test_a_unit_another_process_trains_is_running_and_left_to_it(tmp_path, monkeypatch, capsys):
    """A second driver on the same directory (or a `--unit` job) finds the unit's run lock held: the
    unit is `running`, named with its holder, and neither started again nor counted as failed; a
    unit another process takes after this driver listed it (its run lock refuses this driver's
    process, exit 2) is left to that process too."""
    from steerflow import runlock

    units = [sweep.Unit(id=name, agent="lps", task="cube-single-task2", seeds=[0], preset="smoke", steps=40)
             for name in ("held", "free", "taken")]
    done = ("import json, pathlib; p = pathlib.Path({d!r}); p.mkdir(parents=True, exist_ok=True); "
            "(p / 'final.json').write_text(json.dumps(dict(steps=40, seeds=[0], mean=1.0)))")
    hold = "import sys, time\nfrom steerflow import runlock\nwith runlock.hold(sys.argv[1], 'x'):\n    time.sleep(60)"
    take = ("import pathlib, subprocess, sys, time; lock = pathlib.Path({d!r}) / '.lock'; "
            "lock.parent.mkdir(parents=True); subprocess.Popen([sys.executable, '-c', {hold!r}, str(lock)]); "
            "[time.sleep(0.05) for _ in range(400) if not lock.exists() or not lock.read_text()]; sys.exit(2)")
    scripts = {"held": "import sys; sys.exit(3)", "free": done, "taken": take}
    monkeypatch.setattr(sweep.Unit, "command", lambda unit, out: [
        sys.executable, "-c", scripts[unit.id].format(d=str(out / unit.run_dir), hold=hold)])
    sweep.merge_manifest(tmp_path, units)
    (tmp_path / "runs" / "held").mkdir(parents=True)
    try:
        with runlock.hold(tmp_path / "runs" / "held" / ".lock", "run directory held"):
            assert [sweep.unit_status(tmp_path, u) for u in units] == ["running", "pending", "pending"]
            assert f"trained by process {os.getpid()}" in sweep.status_table(tmp_path, units)
            assert sweep.main(tmp_path, jobs=1) == 0
            out, err = capsys.readouterr()
            assert "1 running elsewhere (left to it)" in out
            assert f"[running elsewhere] held: trained by process {os.getpid()}" in out + err
            assert "[running elsewhere] taken: trained by process" in out + err and "FAILED" not in out + err
            assert not (tmp_path / "logs" / "held.log").exists()
        assert [sweep.unit_status(tmp_path, u) for u in units] == ["pending", "done", "running"]
    finally:
        taker = runlock.held_by(tmp_path / "runs" / "taken" / ".lock")
        if taker:
            os.kill(taker["pid"], 9)


def test_drivers_writing_one_manifest_at_once_lose_no_update(tmp_path):
    """Each read-modify-write of manifest.json holds DIR/.manifest.lock: two processes recording
    the state of their own units at the same time keep every record."""
    code = ("import sys; from steerflow.sweep import record_state\n"
            "for i in range(60): record_state(sys.argv[1], f'{sys.argv[2]}{i}', event='done')")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name]) for name in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    state = json.loads((tmp_path / "manifest.json").read_text())["state"]
    assert sorted(state) == sorted(f"{n}{i}" for n in "ab" for i in range(60))


def test_a_unit_may_bring_its_own_command_and_the_caller_hears_of_each_finished_unit(tmp_path):
    """`argv` trains a unit with another program (a study's reference runner); `on_done(unit)`
    runs once per unit that finished, on every backend's progress (here the local one)."""
    write = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True); "
             "(p / 'final.json').write_text(json.dumps(dict(steps=40, seeds=[0], mean=0.5)))")
    units = [sweep.Unit(id=name, agent="lps", task="cube-single-task2", seeds=[0], preset="smoke", steps=40,
                        argv=[sys.executable, "-c", code, str(tmp_path / "runs" / name)])
             for name, code in (("own", write), ("fails", "import sys; sys.exit(4)"))]
    assert units[0].command(tmp_path)[:2] == [sys.executable, "-c"]
    heard = []
    failed = sweep.run_backend("local", tmp_path, units, None, jobs=1, on_done=lambda u: heard.append(u.id))
    assert heard == ["own"] and set(failed) == {"fails"} and sweep.unit_status(tmp_path, units[0]) == "done"
    assert sweep.run_unit(tmp_path, units[0])["mean"] == 0.5  # a cluster job's entry point: done, skipped
    with pytest.raises(RuntimeError, match="fails: exit code 4"):
        sweep.run_unit(tmp_path, units[1])


def test_interrupt_stops_running_children(tmp_path):
    from steerflow.train import run_commands

    pid_file = tmp_path / "pid"
    # default SIGINT handling whatever this process inherited (a suite started in the background by
    # a non-interactive shell runs with SIGINT ignored, and a plain Python child would keep that)
    sleeper = [sys.executable, "-c", "import os, signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
                                     f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"]

    def on_start(name, cmd, log):
        if name == "second":  # the sleeper is running: interrupt as Ctrl-C would
            deadline = time.time() + 30
            while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt

    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        run_commands([("first", sleeper, tmp_path / "a.log"), ("second", sleeper, tmp_path / "b.log")],
                     max_procs=2, on_start=on_start, grace_s=10)
    assert time.time() - t0 < 40
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(int(pid_file.read_text()), 0)
    assert "KeyboardInterrupt" in (tmp_path / "a.log").read_text()


@pytest.mark.parametrize("args, message", [
    (["--agents", "lps,sac"], "--agents 'sac': unknown agent"),
    (["--tasks", "cube-single-task9"], "--tasks 'cube-single-task9'"),
    (["--preset", "huge"], "--preset 'huge'"),
    (["--seeds", "0,x"], "--seeds '0,x'"),
    (["--set", "critic.num_critics=3"], "--set 'critic.num_critics=3' (agent bc-mf)"),
    (["--set", "lps:critic.num_critic=3"], "has no field 'num_critic'"),
    (["--train-set", "batch_size=big"], "--train-set 'batch_size=big'"),
    (["--grid", "lps:alpha=1,x"], "--grid 'lps:alpha=1,x' (agent lps, value 'x')"),
    (["--grid", "lps:critic.hidden=64,64"], "grids take scalar values only"),
    (["--grid", "qc-mfql:alpha=1,3"], "agent 'qc-mfql' is not in --agents"),
    (["--grid", "learning_rate"], "expected [AGENT:]KEY=VALUE"),
    (["--grid", "learning_rate=1e-3", "--set", "learning_rate=1e-4"], "also fixed by --set"),
    (["--train-set", "steps=33"], "must be a multiple of updates_per_call"),
])
def test_bad_flags_are_named_before_anything_runs(tmp_path, args, message, capsys):
    out = tmp_path / "sw"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--out", str(out), "--agents", "lps,bc-mf", "--tasks", "cube-single-task2",
                  "--preset", "smoke", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_manifest_and_unknown_unit_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--out", str(tmp_path), "--dry-run"])
    assert "--agents and --tasks are required" in capsys.readouterr().err
    cli.main(sweep_cli(tmp_path, "--print-commands"))
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--out", str(tmp_path), "--unit", "lps__cube-single-task1"])
    assert "did you mean ['lps__cube-single-task1__default']" in capsys.readouterr().err


def test_real_sweep_then_skip_then_resume(data_root, tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", "--out", str(out), "--agents", "bc-mf,lps", "--tasks", "cube-single-task2", "--seeds", "0,1",
            "--preset", "smoke", "--train-set", *TINY, "--jobs", "2"]
    cli.main(args)
    assert "2 units: 0 done (skipped), 0 partial (resumed), 2 pending" in capsys.readouterr().out
    units = [sweep.Unit.from_record(r) for r in json.loads((out / "manifest.json").read_text())["units"]]
    assert ids(units) == ["bc-mf__cube-single-task2__default", "lps__cube-single-task2__default"]
    finals = {u.id: out / u.run_dir / "final.json" for u in units}
    logs = {u.id: out / u.log for u in units}
    for u in units:
        final = json.loads(finals[u.id].read_text())
        assert final["agent"] == u.agent and final["steps"] == 40 and final["seeds"] == [0, 1]
        assert len(final["final_success"]) == 2 and sweep.unit_status(out, u) == "done"
    stamps = {k: p.stat().st_mtime_ns for k, p in finals.items()}
    sizes = {k: p.stat().st_size for k, p in logs.items()}

    cli.main(args)  # everything done: nothing is started
    text = capsys.readouterr().out
    assert "2 units: 2 done (skipped), 0 partial (resumed), 0 pending" in text and "2 units: 2 done" in text
    assert {k: p.stat().st_mtime_ns for k, p in finals.items()} == stamps
    assert {k: p.stat().st_size for k, p in logs.items()} == sizes

    lps = units[1]
    finals[lps.id].unlink()  # lps left with its checkpoint but no final.json: partial
    assert sweep.unit_status(out, lps) == "partial"
    cli.main(["sweep", "--out", str(out), "--jobs", "1"])  # the whole manifest: only lps runs
    assert "1 done (skipped), 1 partial (resumed), 0 pending" in capsys.readouterr().out
    assert sweep.unit_status(out, lps) == "done"
    assert "resuming" in logs[lps.id].read_text()
    bc = units[0]
    assert finals[bc.id].stat().st_mtime_ns == stamps[bc.id]
    assert logs[bc.id].stat().st_size == sizes[bc.id]

    cli.main(["sweep", "--out", str(out), "--unit", bc.id])  # the cluster entry point: done, so skipped
    assert "already done" in capsys.readouterr().out
    assert finals[bc.id].stat().st_mtime_ns == stamps[bc.id]
