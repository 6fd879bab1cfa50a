"""The CPU-protocol study and the parity harness (benchmarks/protocol, benchmarks/parity) without
running a reference: every study unit resolves to a valid configuration before hours are spent
on it, the reference launcher's flags mirror the protocol, and a reference run's captured log
becomes a run directory that `steerflow report` puts beside steerflow's own, labelled."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import jax
import pytest

from steerflow.report import build_report, load_run
from steerflow.train import PRESETS, RunSpec, resolve

ROOT = Path(__file__).resolve().parents[1]


def _module(rel):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


study = _module("benchmarks/protocol/study.py")
parity = _module("benchmarks/parity/run_reference.py")


def test_every_study_unit_resolves_and_initialises():
    """A typo in an override would only fail hours into the study: resolve and init them all."""
    from steerflow.agents.common import EnvSpec

    units = study.plan()
    assert len({u.id for u in units}) == len(units), "unit ids must be unique"
    spec = EnvSpec(obs_dim=28, action_dim=5, horizon=5)
    seen = set()
    for u in units:
        if u.impl == "reference" or (u.agent, tuple(sorted(u.overrides.items()))) in seen:
            continue
        seen.add((u.agent, tuple(sorted(u.overrides.items()))))
        agent, config, tc = resolve(RunSpec(agent=u.agent, task=u.task, seeds=[u.seed], preset=study.PRESET,
                                            overrides=dict(u.overrides)))
        jax.eval_shape(lambda k: agent.init(k, spec, config), jax.random.PRNGKey(0))
        assert tc.steps == 100_000


def test_tier1_is_what_the_issue_requires():
    assert {u.agent for u in study.plan() if u.impl == "reference"} == set(parity.IMPLS)
    tier1 = [u for u in study.plan() if u.tier == "tier1"]
    have = {(u.impl, u.agent, u.task, u.seed) for u in tier1}
    for seed in (0, 1, 2):
        for t in (2, 4):
            for agent in ("lps", "qc-fql"):
                assert ("reference", agent, f"cube-single-task{t}", seed) in have
            assert ("steerflow", "dsrl-na", f"cube-single-task{t}", seed) in have
        for t in range(1, 6):
            for agent in ("lps", "bc-mf", "qc-fql"):
                assert ("steerflow", agent, f"cube-single-task{t}", seed) in have
    gaps = [u for u in study.plan() if u.tier == "gaps"]
    assert {u.seed for u in gaps} == set(study.TUNING_SEEDS) and not set(study.TUNING_SEEDS) & {0, 1, 2}
    assert {u.task for u in gaps} == {"cube-single-task2", "cube-single-task4"}


def test_alpha_grid_is_complete_with_each_run_once():
    """Every (agent, α, task, seed) of the α study has exactly one unit; α = 300 is the agents'
    default, so those points are the plain runs (QC-FQL's in tier 1) rather than copies."""
    grid = {}
    for u in study.plan():
        if u.impl == "steerflow" and u.agent in ("qc-fql", "qc-mfql") and u.task in ("cube-single-task2", "cube-single-task4") \
                and u.seed in (0, 1) and set(u.overrides) <= {"alpha"} and not u.train:  # the 300K units are another budget
            grid.setdefault((u.agent, study.resolved_alpha(u), u.task, u.seed), []).append(u.id)
    want = {(a, float(alpha), f"cube-single-task{t}", s) for a in ("qc-fql", "qc-mfql")
            for alpha in (3, 30, 300, 3000) for t in (2, 4) for s in (0, 1)}
    assert set(grid) == want and all(len(ids) == 1 for ids in grid.values())


def test_reference_flags_mirror_the_protocol():
    train = PRESETS["cpu"]["train"]
    args = parity.parse_args(["--impl", "lps", "--reference-dir", "/x", "--task", "cube-single-task4", "--seed", "2",
                              "--dataset-dir", "/d", "--out", "/o"])
    argv = parity.reference_argv(args, Path("/save"))
    assert f"--offline_steps={train['steps']}" in argv and f"--eval_interval={train['eval_every']}" in argv
    assert f"--agent.batch_size={train['batch_size']}" in argv and f"--eval_episodes={train['eval_episodes']}" in argv
    assert "--env_name=cube-single-play-singletask-task4-v0" in argv and "--task_num=4" in argv
    assert "--agent.critic_hidden_dims=(256,256)" in argv and "--seed=2" in argv
    assert "--agent=agents/lps.py" in argv
    dsrl = parity.reference_argv(parity.parse_args(["--impl", "dsrl-na", "--reference-dir", "/x", "--task",
                                                    "cube-single-task4", "--seed", "2", "--dataset-dir", "/d",
                                                    "--out", "/o"]), Path("/save"))
    assert dsrl == [a if a != "--agent=agents/lps.py" else "--agent=agents/dsrl.py" for a in argv]
    qc = parity.reference_argv(parity.parse_args(["--impl", "qc-fql", "--reference-dir", "/x", "--task",
                                                  "puzzle-3x3-task2-sparse", "--seed", "0", "--dataset-dir", "/d",
                                                  "--out", "/o"]), Path("/save"))
    assert "--agent=agents/acfql.py" in qc and "--sparse=True" in qc and "--agent.alpha=300.0" in qc
    assert "--agent.value_hidden_dims=(256,256)" in qc
    with pytest.raises(SystemExit, match="--task"):
        parity.task_names("cube-single")


def test_a_reference_log_becomes_a_labelled_run_directory(tmp_path):
    """What the wandb capture records (training rows every log step, eval rows at eval steps)
    turns into eval.csv / metrics.csv / final.json; steps/s skips windows that hold an evaluation."""
    args = parity.parse_args(["--impl", "qc-fql", "--reference-dir", str(tmp_path), "--task", "cube-single-task2",
                              "--seed", "1", "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                              "--steps", "300", "--eval-every", "300", "--log-every", "100"])
    records = [{"time": 9.0, "step": 100, "eval/success": 0.0},  # evaluated after logging step 100
               {"time": 10.0, "step": 100, "offline_agent/critic_loss": 2.0, "offline_agent/step": 100.0},
               {"time": 12.0, "step": 200, "offline_agent/critic_loss": 1.5},
               {"time": 16.0, "step": 300, "offline_agent/critic_loss": 1.0},
               {"time": 17.0, "step": 300, "eval/success": 0.5}]
    run_dir = tmp_path / "ref"
    run_dir.mkdir()
    final = parity.to_run_dir(args, records, run_dir, started=0.0)
    assert final["final_success"] == [0.5] and final["impl"] == "reference"
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",")[:3] == ["step", "seed", "steps_per_s"]
    assert [row.split(",")[2] for row in metrics[1:]] == ["", "", "25.0"]  # no previous row; the eval after row 100; 100 steps in 4 s
    (seed_run,) = load_run(run_dir)
    assert seed_run.impl == "reference" and seed_run.finished and seed_run.curve == {100: 0.0, 300: 0.5}
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"run": {"agent": "qc-fql", "task": "cube-single-task2", "seeds": [1],
                                                          "preset": "cpu", "overrides": {}},
                                                  "train_config": {"steps": 300, "eval_episodes": 50}}))
    (ours / "eval.csv").write_text("step,seed,success\n300,1,0.6\n")
    records = build_report([str(run_dir), str(ours)], None, plots=False)["records"]
    methods = {r["method"] for r in records if r["kind"] == "task"}
    assert methods == {"qc-fql", "qc-fql [reference]"}


def test_the_gpu_lease_rehearses_on_the_cpu_within_what_a_lease_brings_back(tmp_path):
    """`benchmarks/gpu/lease.py run --rehearse`: every stage of the lease at smoke size on this CPU,
    one unit of two tasks vmapped together, stopped by its wall budget and evaluated there, each
    task's records (no checkpoint) packed, and $OUT within the device tool's limits; a bad agent
    or task fails in seconds, before any work."""
    import subprocess
    import tarfile

    script, out = ROOT / "benchmarks" / "gpu" / "lease.py", tmp_path / "out"
    for flags, says in ((["--agents", "lpz"], "lpz"), (["--tasks", "cube-single-task2,scene-task2"], "one domain")):
        bad = subprocess.run([sys.executable, str(script), "run", "--rehearse", "--out", str(out), *flags],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and says in bad.stdout + bad.stderr and not (out / "records.tgz").exists()
    two = "cube-single-task2,cube-single-task4"
    done = subprocess.run([sys.executable, str(script), "run", "--rehearse", "--out", str(out), "--agents", "lps",
                           "--tasks", two, "--episodes", "3", "--budget-s", "200"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "records.tgz", "summary.txt"]
    assert "$OUT within the device tool's limits" in done.stdout
    summary = (out / "summary.txt").read_text()
    for task in two.split(","):
        assert f"lps-cube-single/{task}: " in summary and "(of 1000000)" in summary and "per seed [" in summary
        with tarfile.open(out / "records.tgz") as tar:
            names = tar.getnames()
            final = json.load(tar.extractfile(f"lps-cube-single/{task}/final.json"))
        assert not any("checkpoints" in n for n in names) and f"lps-cube-single/{task}/config.json" in names
        assert final["stopped"] == "max_wall_s" and 0 < final["steps"] < 1_000_000


def test_an_entry_is_running_while_its_training_process_holds_its_lock(tmp_path, monkeypatch):
    """`status` and other runners see an entry as running from the lock its process holds: the run
    directory's own for steerflow, the one beside it for a reference (renamed into place at the end)."""
    from steerflow import runlock

    monkeypatch.setattr(study, "RUNS", tmp_path)
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    ours = next(e for e in study.plan() if e.impl == "steerflow")
    ref = next(e for e in study.plan() if e.impl == "reference")
    for entry in (ours, ref):
        study.lock_file(entry).parent.mkdir(parents=True, exist_ok=True)
        assert study.status(entry) == "pending" and study.running_pid(entry) is None
        with runlock.hold(study.lock_file(entry), f"run directory of {entry.id}"):
            assert study.status(entry) == "running" and study.running_pid(entry) == os.getpid()
        assert study.status(entry) == "pending"
    assert study.lock_file(ref).parent == tmp_path / "runs" and study.lock_file(ours).parent == tmp_path / "runs" / ours.id


def test_the_study_runs_its_entries_through_the_sweep_runner(data_root, tmp_path, monkeypatch, capsys):
    """One entry, trained at the smoke preset as a sweep unit of one seed: its records land in the
    committed results as it finishes (with unit.json), the sweep's manifest holds its command, and a
    second run finds nothing to do."""
    entry = study.Entry("t", "steerflow", "bc-mf", "cube-single-task2", 3)
    monkeypatch.setattr(study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "PRESET", "smoke")
    monkeypatch.setattr(study, "plan", lambda: [entry])
    for name in ("XLA_FLAGS", "MUJOCO_GL", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # the runner sets them for its units
        monkeypatch.setenv(name, os.environ.get(name, ""))
    assert study.main(["run", "--jobs", "1"]) == 0
    records = tmp_path / "results" / "units" / entry.id
    final = json.loads((records / "final.json").read_text())
    assert final["agent"] == "bc-mf" and final["seeds"] == [3] and final["steps"] == 40
    assert json.loads((records / "unit.json").read_text())["seed"] == 3
    manifest = json.loads((tmp_path / "runs" / "manifest.json").read_text())
    assert [u["id"] for u in manifest["units"]] == [entry.id] and manifest["state"][entry.id]["event"] == "done"
    assert "--seeds 3 --preset smoke" in manifest["units"][0]["command"]
    said = capsys.readouterr()
    assert study.status(entry) == "done" and "[done] " + entry.id in said.out + said.err
    assert study.main(["run"]) == 0
    assert "0 entries to run" in capsys.readouterr().out


def test_alpha_table_groups_runs_by_their_resolved_alpha(tmp_path, monkeypatch, capsys):
    """The α study's table reads α from the resolved config, so a default run (tier 1's QC-FQL,
    no override) lands at α = 300 beside the swept points, and LPS gets one α-less row; Q and the
    distillation loss are means of each run's last logged row."""
    monkeypatch.setattr(study, "RESULTS", tmp_path)
    finished = {"steerflow-qc-fql-cube-single-task2-s0": 0.58, "steerflow-qc-fql-alpha3-cube-single-task2-s0": 0.10,
                "steerflow-qc-fql-alpha3-cube-single-task4-s1": 0.30, "steerflow-lps-cube-single-task4-s0": 0.60,
                "steerflow-lps-cube-single-task1-s0": 0.99}  # task 1 is not a tuning task: left out
    for unit_id, success in finished.items():
        (tmp_path / "units" / unit_id).mkdir(parents=True)
        (tmp_path / "units" / unit_id / "final.json").write_text(json.dumps({"mean": success}))
    for unit_id, q in (("steerflow-qc-fql-alpha3-cube-single-task2-s0", -10.0), ("steerflow-qc-fql-alpha3-cube-single-task4-s1", -5.0)):
        (tmp_path / "units" / unit_id / "metrics.csv").write_text(
            f"step,q_mean,distill_loss\n50,-99,9\n100,{q},0.5\n")  # the last row counts
    study.main(["alpha", "--plot", str(tmp_path / "alpha.png")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| qc") or line.startswith("| lps")]
    assert rows == ["| qc-fql | 3 | 10 | – | – | 30 | 20.0 (2) | -7.5 | 0.5 |", "| qc-fql | 300 | 58 | – | – | – | 58.0 (1) | – | – |",
                    "| lps | – | – | – | 60 | – | 60.0 (1) | – | – |"]
    assert (tmp_path / "alpha.png").stat().st_size > 0
