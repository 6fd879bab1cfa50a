"""The practitioner benchmark's results page is generated from its committed records, never typed:
regenerating `docs/results/practitioner.md` from `benchmarks/results/practitioner_loop_cpu.json`
must give the committed page byte for byte (so page and records cannot drift apart)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _practitioner():
    spec = importlib.util.spec_from_file_location("practitioner", ROOT / "benchmarks" / "practitioner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_page_regenerates_from_the_records():
    module = _practitioner()
    page = module.report(json.loads(module.RECORDS.read_text()), module.read_diagnosis())
    assert page == (ROOT / "docs" / "results" / "practitioner.md").read_text()


def test_the_page_shows_each_budget_of_a_curve_with_its_ci_and_the_online_row():
    module = _practitioner()
    row = {"seeds": [0, 1], "device": "cpu", "commit": "abc", "wall_s": 1.0, "note": "",
           "curve": {"20000": [0.5, 0.7], "50000": [1.0, 1.0]}, "success": [1.0, 1.0], "online_steps": 0}
    online = {**row, "curve": {}, "success": [0.0, 0.2], "online_steps": 10000}
    page = module.report({"demos": {"t/50/all": {"transitions": 9, "lengths_mean": 3.0, "lengths_min": 2, "lengths_max": 4}},
                          "results": {"t/50/all/lps@50000": row, "t/50/all/lps@50000+on10000": online}})
    assert ("| lps@50000 | 60.0 [50, 70] | 100.0 [100, 100] | – | 100.0 [100, 100] at 50K | 10.0 [0, 20] "
            "(+10K env steps) | 20→60 50→100 |") in page


def test_a_resumed_rows_wall_time_is_marked_as_its_last_process_only():
    module = _practitioner()
    row = {"seeds": [0], "device": "cpu", "commit": "abc", "wall_s": 880.0, "note": "n", "curve": {}, "success": [1.0]}
    assert module.wall(row) == "880"
    assert module.wall({**row, "resumed_from_step": 60000}) == "880 (resumed from step 60000: that process only)"
    page = module.report({"demos": {}, "results": {"t/50/all/lps@50000+on100": {**row, "resumed_from_step": 60000}}})
    assert "| t/50/all/lps@50000+on100 | 0 | cpu | abc | 880 (resumed from step 60000: that process only) | n |" in page


def test_the_glance_table_compares_lps_with_bc_at_each_budget_and_says_where_it_stands():
    module = _practitioner()
    lps = {"steps": 50000, "curve": {"20000": [0.9, 0.95, 1.0], "50000": [0.2, 0.3, 0.25]}, "success": [0.2, 0.3, 0.25]}
    bc = {"steps": 50000, "curve": {"20000": [0.1, 0.15, 0.2], "50000": [0.2, 0.3, 0.3]}, "success": [0.2, 0.3, 0.3]}
    groups = {"t/50/all": {"lps@50000": lps, "bc-mf@50000": bc}}
    assert "| t · 50 · all | 95 vs 15: +80 [+73, +87] | 25 vs 27: -2 [-8, +5] | – | – |" in module.glance(groups)
    assert ("- Of 2 comparisons, LPS is above BC-MF in 1, indistinguishable (the CI holds 0) in 1 and below in 0."
            in module.findings(groups, []))


def test_each_lps_variant_is_compared_with_bc_at_every_step_both_curves_have():
    module = _practitioner()
    bc = {"steps": 50000, "curve": {"20000": [0.5, 0.5], "50000": [0.5, 0.5]}, "success": [0.5, 0.5]}
    variant = {"steps": 30000, "curve": {"20000": [0.7, 0.7], "30000": [0.9, 0.9]}, "success": [0.9, 0.9]}
    lines = module.variants({"t/50/all": {"bc-mf@50000": bc, "lps-pessimistic@30000": variant}})
    assert "| t · 50 · all | lps-pessimistic | 20: +20 [+20, +20] |" in lines
    # with both online rows, the online difference follows the offline steps, in the table and the findings
    groups = {"t/50/all": {"bc-mf@50000": bc, "lps-pessimistic@30000": variant,
                           "bc-mf@50000+on100": {"success": [0.6, 0.6]}, "lps-pessimistic@30000+on100": {"success": [0.5, 0.5]}}}
    assert "| t · 50 · all | lps-pessimistic | 20: +20 [+20, +20] · online: -10 [-10, -10] |" in module.variants(groups)
    bc_at_30k = {**bc, "curve": {**bc["curve"], "30000": [0.4, 0.4]}}
    groups["t/50/all"]["bc-mf@50000"] = bc_at_30k
    assert module.variant_findings(groups) == [
        "- lps-pessimistic − BC-MF in points: t · 50 · all at 30K: +50 [+50, +50]; t · 50 · all after online fine-tuning: "
        "-10 [-10, -10]."]


def test_the_stopping_rule_takes_each_seeds_evaluation_of_lowest_held_out_mse():
    module = _practitioner()
    row = {"seeds": [0, 1], "curve": {"10000": [0.2, 0.4], "20000": [0.9, 0.5], "30000": [0.1, 0.8]},
           "held_out_mse": {"10000": [0.5, 0.5], "20000": [0.1, 0.4], "30000": [0.3, 0.2]}}
    lines = module.stopping_rule({"t/50/all": {"lps@30000": row, "bc-mf@30000": {"seeds": [0], "curve": {"30000": [1.0]}}}})
    # seed 0 picks 20K (0.9), seed 1 picks 30K (0.8); last: 0.1 and 0.8; best: 0.9 and 0.8
    assert "| t · 50 · all | lps@30000 | 45.0 | 85.0 (20K, 30K) | 85.0 |" in lines
    assert not any("bc-mf" in line for line in lines)  # no held-out curve, no row
    assert module.stopping_rule({"t/50/all": {"bc-mf@30000": {"seeds": [0], "curve": {"30000": [1.0]}}}}) == []


def test_the_stopping_rule_says_how_far_each_family_fell_from_the_last_evaluation():
    module = _practitioner()
    mse = {"10000": [0.1, 0.1], "20000": [0.2, 0.2]}  # lowest at 10K on both seeds
    bc = {"seeds": [0, 1], "curve": {"10000": [0.8, 0.8], "20000": [0.7, 0.7]}, "held_out_mse": mse}
    early = {"seeds": [0, 1], "curve": {"10000": [0.2, 0.3], "20000": [0.8, 0.9]}, "held_out_mse": mse}
    near = {"seeds": [0, 1], "curve": {"10000": [0.3, 0.3], "20000": [0.4, 0.4]}, "held_out_mse": mse}  # -10 (in floats, -10.000000000000004)
    lines = module.stopping_rule({"t/50/all": {"bc-mf@20000": bc, "lps@20000": early, "qc-fql@20000": near}})
    assert ("- Rows with behaviour cloning: the lowest held-out MSE's choice minus the last evaluation is +10 to +10 "
            "points; more than 10 points below it in 0 of 1 rows.") in lines
    assert ("- Rows with a critic: the lowest held-out MSE's choice minus the last evaluation is -60 to -10 points; "
            "more than 10 points below it in 1 of 2 rows.") in lines


def test_the_methods_table_pairs_each_budget_with_the_online_run_that_continued_it():
    module = _practitioner()
    long = {"steps": 100000, "curve": {"50000": [0.9, 0.9], "100000": [0.1, 0.1]}, "success": [0.1, 0.1]}
    own = {"steps": 50000, "curve": {"50000": [0.5, 0.7]}, "success": [0.5, 0.7]}
    groups = {"a/50/all": {"bc-mf@100000": long, "bc-mf@50000": own, "bc-mf@50000+on100": {"success": [0.8, 1.0]},
                           "lps@100000": long},
              "b/50/all": {"bc-mf@100000": long}}
    lines = module.methods_table(groups)
    assert "| row | a · 50 · all | b · 50 · all |" in lines
    # bc-mf: its own 50K run (which online continued), not the 100K run's 50K evaluation; elsewhere the longest run
    assert "| bc-mf | 60 → 90 | 90 |" in lines
    assert "| lps | 90 | – |" in lines
    assert not any(line.startswith("| qc-fql") for line in lines)  # a method with no row anywhere is left out


def test_the_best_method_per_test_bed_is_the_highest_mean_offline_and_online():
    module = _practitioner()
    row = lambda offline, online=None: {"steps": 50000, "curve": {"50000": offline}, "success": offline}
    groups = {"a/50/all": {"bc-mf@50000": row([0.9, 0.7]), "lps@50000": row([0.6, 0.6]),
                           "bc-mf@50000+on10": {"success": [0.5, 0.5]}, "lps@50000+on10": {"success": [0.9, 0.9]}},
              "b/50/all": {"lps@50000": row([0.2, 0.4])}}
    best = module.best_methods(groups)
    assert best["a/50/all"] == (("bc-mf", 0.8), ("lps", 0.9))
    assert best["b/50/all"][0] == ("lps", pytest.approx(0.3)) and best["b/50/all"][1] is None
