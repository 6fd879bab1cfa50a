"""Aggregating results over seeds: means with 95% (stratified) bootstrap confidence intervals,
learning-curve plots with CI bands (docs/algorithms.md#evaluation-protocol: 1000 resamples over seeds), and the
`steerflow report` summary of finished run directories.

    build_report(["runs/cube_single"], "report")   # or: steerflow report runs/cube_single --out report

Runs are found recursively (a directory holding `config.json`, plus `eval.csv` once it has been
evaluated, as written by `train.train`; `seed_k/` children of `train_processes` are ordinary run
directories). Seeds are grouped into methods (agent + its `--set` overrides, + preset when the
runs mix presets) and tasks; the seeds of one (method, task) may come from several directories.
A seed counts only once its last evaluation step equals its configured `train_config.steps`.

Hyperparameter selection (`select_hyperparameters`), the one rule every tuned method uses (docs/algorithms.md#evaluation-protocol,
the QC/QAM/QPILOTS protocol): within an agent, the `--set` keys whose values differ between runs
are the swept ones; per domain, each of their value combinations is scored by its mean final
success over the tuning tasks (2 and 4) and the best is selected (ties: the first in value order).
The selection is printed in the report and recorded in records.json (`"kind": "selection"`).

A directory that cannot be read (malformed `config.json` or `eval.csv`), a run marked failed
(`failed.json`: its losses became non-finite) and an unfinished run are listed in the report
and left out of the statistics; they never stop it.

Modules: `stats` (bootstrap CIs), `runs` (finding and reading run directories), `labels` (task
domains, method labels), `records` (grouping seeds, the JSON records), `selection` (the
hyperparameter rule), `plots` (learning curves), `tables` (the Markdown); `build_report` joins them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .labels import method_labels, task_domain
from .plots import plot_curves, write_curve_plots
from .records import aggregate, domain_record, task_record
from .runs import SeedRun, find_run_dirs, load_run, read_curve, read_runs
from .selection import TUNING_TASKS, select_hyperparameters
from .stats import RESAMPLES, bootstrap_ci, stratified_bootstrap_ci
from .tables import report_markdown

__all__ = ["RESAMPLES", "TUNING_TASKS", "SeedRun", "bootstrap_ci", "build_report", "domain_record", "find_run_dirs",
           "load_run", "method_labels", "plot_curves", "read_curve", "select_hyperparameters",
           "stratified_bootstrap_ci", "task_domain", "task_record"]


def build_report(run_dirs, out: str | os.PathLike | None = "report", resamples: int = RESAMPLES,
                 plots: bool = True) -> dict:
    """Aggregate run directories into `report.md`, `records.json` and learning-curve PNGs under
    `out` (nothing is written when `out` is None). Returns {"records", "markdown", "warnings",
    "incomplete", "files"}."""
    dirs = find_run_dirs(run_dirs)
    runs, malformed = read_runs(dirs)
    labels = method_labels(runs)
    agg = aggregate(runs, labels, malformed, resamples)
    selections = select_hyperparameters(agg.task_recs)
    records = agg.records + selections
    markdown = report_markdown(runs, labels, len(dirs), agg, selections, resamples, plots and out is not None)
    files = []
    if out is not None:
        from steerflow.runinfo import atomic_write_bytes, atomic_write_json

        out = Path(out)
        atomic_write_bytes(out / "report.md", markdown.encode())
        atomic_write_json(out / "records.json", records)
        files += [out / "report.md", out / "records.json"]
        if plots:
            files += write_curve_plots(out, agg)
    return {"records": records, "markdown": markdown, "warnings": agg.warnings, "incomplete": agg.incomplete,
            "selections": selections, "malformed": malformed, "files": [str(f) for f in files]}
