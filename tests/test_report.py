"""`steerflow report` on fabricated run directories (no training): grouping of seeds into methods
across directories, final vs best success, (stratified) bootstrap CIs, incomplete runs, domain
tables, errors, the files written and the CLI."""

import json

import numpy as np
import pytest

from steerflow import cli
from steerflow.report import (
    bootstrap_ci,
    build_report,
    find_run_dirs,
    load_run,
    method_labels,
    stratified_bootstrap_ci,
    task_domain,
)

STEPS = 300
REQUIRED = {"agent", "task", "preset", "steps", "seeds", "final_success", "mean", "ci95", "best_success",
            "best_step", "best_ci95", "device", "commit", "overrides", "episodes", "run_dirs"}


def make_run(path, agent, task, curves, steps=STEPS, preset="cpu", overrides=None, episodes=10,
             commit="abc", device="cpu: test"):
    """A run directory as `train.train` writes it; curves = {seed: {step: success}}."""
    path.mkdir(parents=True)
    seeds = sorted(curves)
    run = {"agent": agent, "task": task, "seeds": seeds, "preset": preset, "overrides": overrides or {},
           "train_overrides": {}}
    (path / "config.json").write_text(json.dumps(
        {"run": run, "agent_config": {}, "train_config": {"steps": steps, "eval_episodes": episodes}}))
    rows = ["step,seed,success"] + [f"{t},{s},{v}" for t in sorted({t for c in curves.values() for t in c})
                                    for s in seeds if t in curves[s] for v in [curves[s][t]]]
    (path / "eval.csv").write_text("\n".join(rows) + "\n")
    (path / "run_info.json").write_text(json.dumps({"commit": commit, "device": device}))
    if all(max(c) == steps for c in curves.values()):
        final = [curves[s][steps] for s in seeds]
        (path / "final.json").write_text(json.dumps(
            {"agent": agent, "task": task, "preset": preset, "steps": steps, "seeds": seeds,
             "final_success": final, "mean": float(np.mean(final)), "episodes": episodes, "device": device,
             "commit": commit, "overrides": overrides or {}}))
    return path


def flat(final, best=None, best_step=200):
    """A curve over steps 100/200/300 ending at `final`, peaking at `best` at `best_step`."""
    curve = {100: 0.0, 200: final, 300: final}
    if best is not None:
        curve[best_step] = best
    return curve


def by(records, method, task):
    (rec,) = [r for r in records if r["method"] == method and r["task"] == task]
    return rec


def test_seeds_merge_across_dirs_and_overrides_make_separate_methods(tmp_path):
    make_run(tmp_path / "a", "lps", "cube-single-task1", {0: flat(0.2), 1: flat(0.4)})  # vmapped seeds
    make_run(tmp_path / "b", "lps", "cube-single-task1", {2: flat(0.6)})
    make_run(tmp_path / "c", "lps", "cube-single-task1", {0: flat(1.0)}, overrides={"alpha": "30"})
    make_run(tmp_path / "d", "bc-mf", "cube-single-task1", {0: flat(0.0)})
    result = build_report([tmp_path], None)
    lps = by(result["records"], "lps", "cube-single-task1")
    assert lps["seeds"] == [0, 1, 2] and lps["final_success"] == [0.2, 0.4, 0.6]
    assert lps["mean"] == pytest.approx(0.4) and lps["run_dirs"] == sorted([str(tmp_path / "a"), str(tmp_path / "b")])
    alpha = by(result["records"], "lps alpha=30", "cube-single-task1")
    assert alpha["overrides"] == {"alpha": "30"} and alpha["final_success"] == [1.0]
    assert {r["method"] for r in result["records"]} == {"lps", "lps alpha=30", "bc-mf"}
    assert "| lps alpha=30 | 1 |" in result["markdown"] and "preset=" not in result["markdown"]


def test_preset_joins_the_label_only_when_presets_are_mixed(tmp_path):
    make_run(tmp_path / "a", "lps", "cube-single-task1", {0: flat(0.2)}, preset="cpu")
    make_run(tmp_path / "b", "lps", "cube-single-task1", {0: flat(0.5)}, preset="paper")
    methods = {r["method"] for r in build_report([tmp_path], None)["records"]}
    assert methods == {"lps preset=cpu", "lps preset=paper"}


def test_final_is_the_last_step_and_best_the_step_with_the_highest_seed_mean(tmp_path):
    make_run(tmp_path / "a", "lps", "cube-single-task1",
             {0: {100: 0.1, 200: 0.9, 300: 0.3}, 1: {100: 0.5, 200: 0.5, 300: 0.5}})
    rec = build_report([tmp_path], None)["records"][0]
    assert rec["final_success"] == [0.3, 0.5] and rec["mean"] == pytest.approx(0.4)
    assert rec["best_step"] == 200 and rec["best_success"] == pytest.approx(0.7)
    assert rec["best_per_seed"] == [0.9, 0.5]
    lo, hi = rec["best_ci95"]
    assert 0.5 <= lo <= 0.7 <= hi <= 0.9


def test_stratified_ci_matches_a_hand_computation():
    per_task = [[0.1, 0.3, 0.2], [0.0, 0.5], [1.0, 0.8, 0.6, 0.4]]
    rng = np.random.default_rng(7)
    draws = np.zeros(1000)
    for values in per_task:  # seeds resampled within each task, same rng stream
        values = np.asarray(values)
        draws += values[rng.integers(0, len(values), (1000, len(values)))].mean(1)
    expected = np.quantile(draws / len(per_task), [0.025, 0.975])
    assert stratified_bootstrap_ci(per_task, seed=7) == pytest.approx(tuple(expected))


def test_ci_properties():
    values = [0.1, 0.4, 0.3, 0.8]
    lo, hi = bootstrap_ci(values)
    assert lo <= np.mean(values) <= hi and hi - lo > 0
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    per_task = [[0.1, 0.5, 0.3], [0.0, 0.2, 0.1]]
    lo, hi = stratified_bootstrap_ci(per_task)
    assert lo <= np.mean([np.mean(v) for v in per_task]) <= hi
    assert stratified_bootstrap_ci([[0.3] * 3, [0.7] * 3]) == pytest.approx((0.5, 0.5))
    # more seeds per task, same spread: narrower
    wide = stratified_bootstrap_ci([[0.0, 1.0]] * 2)
    narrow = stratified_bootstrap_ci([[0.0, 1.0] * 8] * 2)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_incomplete_runs_are_reported_and_left_out(tmp_path):
    make_run(tmp_path / "done", "lps", "cube-single-task1", {0: flat(0.2), 1: flat(0.4)})
    make_run(tmp_path / "killed", "lps", "cube-single-task1", {2: {100: 0.9, 200: 0.9}})
    make_run(tmp_path / "only", "lps", "cube-single-task2", {0: {100: 0.5}})
    result = build_report([tmp_path], None)
    rec = by(result["records"], "lps", "cube-single-task1")
    assert rec["seeds"] == [0, 1] and rec["mean"] == pytest.approx(0.3)
    assert not [r for r in result["records"] if r["task"] == "cube-single-task2"]
    assert len(result["warnings"]) == 2 and all(w.startswith("warning:") for w in result["warnings"])
    md = result["markdown"]
    assert "incomplete (200/300 steps)" in md and str(tmp_path / "killed") in md
    assert "| incomplete (100/300 steps) | missing task2 |" in md  # the task2 cell: no finished seed
    assert {i["run_dir"] for i in result["incomplete"]} == {str(tmp_path / "killed"), str(tmp_path / "only")}


def test_domain_mean_only_for_methods_with_every_task(tmp_path):
    for t, (a, b) in enumerate([(0.2, 0.4), (0.6, 0.8)], start=1):
        make_run(tmp_path / f"lps{t}", "lps", f"cube-single-task{t}", {0: flat(a), 1: flat(b)})
    make_run(tmp_path / "bc1", "bc-mf", "cube-single-task1", {0: flat(0.1)})
    result = build_report([tmp_path], None)
    dom = by(result["records"], "lps", "cube-single")
    assert dom["kind"] == "domain" and dom["tasks"] == ["cube-single-task1", "cube-single-task2"]
    assert dom["final_success"] == pytest.approx([0.4, 0.6]) and dom["mean"] == pytest.approx(0.5)
    assert dom["ci95"][0] <= 0.5 <= dom["ci95"][1] and REQUIRED <= set(dom)
    assert dom["best_step"] == {"cube-single-task1": 200, "cube-single-task2": 200}
    assert not [r for r in result["records"] if r["method"] == "bc-mf" and r["kind"] == "domain"]
    bc_rows = [line for line in result["markdown"].splitlines() if line.startswith("| bc-mf |")]
    assert len(bc_rows) == 2 and all(row.endswith("| missing task2 |") for row in bc_rows)
    assert "**50.0**" in result["markdown"]


def test_domains_follow_parse_task():
    assert task_domain("cube-single-task2") == "cube-single"
    assert task_domain("scene-task1-sparse") == "scene-sparse"
    assert task_domain("puzzle-3x3-task4") == "puzzle-3x3"


def test_sparse_tasks_get_their_own_domain_table(tmp_path):
    make_run(tmp_path / "a", "lps", "scene-task1", {0: flat(0.2)})
    make_run(tmp_path / "b", "lps", "scene-task1-sparse", {0: flat(0.4)})
    md = build_report([tmp_path], None)["markdown"]
    assert "## scene\n" in md and "## scene-sparse\n" in md


def test_a_seed_in_two_dirs_is_an_error_naming_both(tmp_path):
    make_run(tmp_path / "first", "lps", "cube-single-task1", {0: flat(0.2), 1: flat(0.3)})
    make_run(tmp_path / "second", "lps", "cube-single-task1", {1: flat(0.4)})
    with pytest.raises(ValueError, match="seed 1") as err:
        build_report([tmp_path], None)
    assert str(tmp_path / "first") in str(err.value) and str(tmp_path / "second") in str(err.value)


def test_sweep_and_seed_k_layouts_are_found(tmp_path):
    make_run(tmp_path / "sweep" / "runs" / "u0", "lps", "cube-single-task1", {0: flat(0.2)})
    make_run(tmp_path / "sweep" / "runs" / "u1", "lps", "cube-single-task1", {1: flat(0.4)})
    make_run(tmp_path / "procs" / "seed_2", "lps", "cube-single-task1", {2: flat(0.6)})
    (tmp_path / "procs" / "final.json").write_text("{}")  # train_processes' gathered record
    found = find_run_dirs([tmp_path / "sweep", tmp_path / "procs", tmp_path / "sweep" / "runs" / "u0"])
    assert len(found) == 3  # the run directory given twice counts once
    rec = build_report([tmp_path / "sweep", tmp_path / "procs"], None)["records"][0]
    assert rec["seeds"] == [0, 1, 2]


def test_errors_name_the_path_at_fault(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_report([tmp_path / "nowhere"], None)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="contains no run directory"):
        build_report([tmp_path / "empty"], None)
    bad = make_run(tmp_path / "badcsv", "lps", "cube-single-task1", {0: flat(0.2)})
    (bad / "eval.csv").write_text("step,seed\n100,0\n")
    with pytest.raises(ValueError, match=r"badcsv/eval.csv.*success"):
        load_run(bad)
    (bad / "eval.csv").write_text("step,seed,success\n100,0,oops\n")
    with pytest.raises(ValueError, match=r"badcsv/eval.csv"):
        load_run(bad)
    bad = make_run(tmp_path / "badcfg", "lps", "cube-single-task1", {0: flat(0.2)})
    (bad / "config.json").write_text('{"run": {"agent": "lps"')
    with pytest.raises(ValueError, match=r"badcfg/config.json"):
        load_run(bad)
    (bad / "config.json").write_text('{"run": {"agent": "lps"}, "train_config": {}}')
    with pytest.raises(ValueError, match=r"badcfg/config.json"):
        load_run(bad)


def test_a_tree_with_malformed_failed_and_unfinished_runs_is_reported_not_fatal(tmp_path, capsys):
    """`report` lists every run it cannot use, with the reason, and aggregates the others."""
    make_run(tmp_path / "good", "lps", "cube-single-task1", {0: flat(0.2), 1: flat(0.4)})
    bad_csv = make_run(tmp_path / "badcsv", "lps", "cube-single-task1", {2: flat(0.2)})
    (bad_csv / "eval.csv").write_text("step,seed\n100,0\n")
    bad_cfg = make_run(tmp_path / "badcfg", "lps", "cube-single-task1", {3: flat(0.2)})
    (bad_cfg / "config.json").write_text('{"run": {"agent": "lps"')
    make_run(tmp_path / "unfinished", "lps", "cube-single-task1", {4: {100: 0.5}})
    zero = make_run(tmp_path / "zero", "lps", "cube-single-task1", {5: {100: 0.5}}, steps=0)
    (zero / "eval.csv").write_text("step,seed,success\n")  # `--steps 0` used to leave this behind
    diverged = make_run(tmp_path / "diverged", "lps", "cube-single-task1", {6: flat(0.9)})
    (diverged / "failed.json").write_text(json.dumps({"status": "diverged", "step": 200,
                                                      "losses": {"critic_loss": [float("nan")]}}))
    out = tmp_path / "report"
    cli.main(["report", str(tmp_path), "--out", str(out)])
    md = (out / "report.md").read_text()
    rec = json.loads((out / "records.json").read_text())[0]
    assert rec["seeds"] == [0, 1] and rec["mean"] == pytest.approx(0.3)
    for name in ("badcsv", "badcfg", "unfinished", "zero", "diverged"):
        assert str(tmp_path / name) in md, name
    assert "cannot read run directory" in md and "badcsv/eval.csv" in md and "badcfg/config.json" in md
    assert "failed (diverged: non-finite critic_loss at step 200)" in md
    assert "incomplete (0/0 steps)" in md
    capsys.readouterr()


def test_method_labels_add_steps_when_one_method_mixes_step_counts(tmp_path):
    a = make_run(tmp_path / "a", "lps", "cube-single-task1", {0: flat(0.2)})
    b = make_run(tmp_path / "b", "lps", "cube-single-task1", {1: {100: 0.1, 200: 0.2}}, steps=200)
    assert method_labels(load_run(a) + load_run(b)) == ["lps steps=300", "lps steps=200"]


def test_cli_writes_the_report_files(tmp_path, capsys):
    for t in (1, 2):
        make_run(tmp_path / "runs" / f"lps{t}", "lps", f"cube-single-task{t}",
                 {0: flat(0.2, best=0.5), 1: flat(0.4), 2: flat(0.3)}, commit="c1")
        make_run(tmp_path / "runs" / f"bc{t}", "bc-mf", f"cube-single-task{t}",
                 {0: flat(0.1), 1: flat(0.0), 2: flat(0.2)}, commit="c2")
    out = tmp_path / "report"
    cli.main(["report", str(tmp_path / "runs"), "--out", str(out)])
    stdout = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md.strip() in stdout and "## cube-single" in md
    assert "- commits: c1 (6 seed runs), c2 (6 seed runs)" in md and "- evaluation episodes per seed: 10" in md
    assert "highest seed-mean success" in md  # the best-success definition is stated
    records = json.loads((out / "records.json").read_text())
    assert len(records) == 2 * 2 + 2 and all(REQUIRED <= set(r) for r in records)
    for name in ("curves_cube-single-task1.png", "curves_cube-single-task2.png", "curves_cube-single.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.glob(".*.tmp"))


def test_cli_exit_code_2_on_a_missing_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "missing does not exist" in capsys.readouterr().err


def test_report_selects_the_swept_value_with_the_best_tuning_task_mean(tmp_path, capsys):
    """The per-domain α rule: best mean over tasks 2 and 4; task 3 (not a tuning task) and the
    other agent's runs do not vote; an α missing a tuning task is not a candidate."""
    finals = {0.1: {2: 0.2, 4: 0.6, 3: 0.0}, 0.3: {2: 0.5, 4: 0.5, 3: 0.0}, 1.0: {2: 0.9, 4: 0.0, 3: 1.0}}
    for alpha, per_task in finals.items():
        for n, final in per_task.items():
            make_run(tmp_path / f"u-{alpha}-{n}", "qpilots-u", f"cube-double-task{n}",
                     {0: flat(final), 1: flat(final)}, overrides={"alpha": alpha})
    make_run(tmp_path / "u-2.0-2", "qpilots-u", "cube-double-task2", {0: flat(1.0)}, overrides={"alpha": 2.0})
    make_run(tmp_path / "fql", "qc-fql", "cube-double-task2", {0: flat(1.0)}, overrides={"alpha": 300})
    cli.main(["report", str(tmp_path), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    records = json.loads((tmp_path / "report" / "records.json").read_text())
    (sel,) = [r for r in records if r.get("kind") == "selection"]
    assert sel["agent"] == "qpilots-u" and sel["domain"] == "cube-double" and sel["keys"] == ["alpha"]
    assert sel["tuning_tasks"] == ["cube-double-task2", "cube-double-task4"]
    assert sel["selected"] == {"alpha": "0.3"} and sel["selected_mean"] == pytest.approx(0.5)  # 0.45 < 0.5 > 0.45
    assert [c["values"]["alpha"] for c in sel["candidates"]] == ["0.1", "0.3", "1.0"]
    assert sel["incomplete"] == ["2.0"]
    assert "## Selected hyperparameters" in out and "**alpha=0.3**" in out
