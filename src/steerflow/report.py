"""Aggregating results over seeds: means with 95% (stratified) bootstrap confidence intervals,
and learning-curve plots with CI bands (SPEC §6: 1000 resamples over seeds)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def bootstrap_ci(values, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean over seeds."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def stratified_bootstrap_ci(per_task: list, resamples: int = 1000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """CI of the mean over tasks of per-task seed means; seeds are resampled within each task."""
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for values in per_task:
        values = np.asarray(values, float)
        draws += values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    draws /= len(per_task)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def read_curve(eval_csv: Path) -> dict[int, dict[int, float]]:
    """eval.csv → {seed: {step: success}}."""
    curve: dict[int, dict[int, float]] = {}
    with open(eval_csv) as f:
        for row in csv.DictReader(f):
            curve.setdefault(int(row["seed"]), {})[int(row["step"])] = float(row["success"])
    return curve


def plot_curves(curves: dict[str, dict[int, dict[int, float]]], path: Path, title: str = "") -> None:
    """One line per label: mean success over seeds with a 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for label, by_seed in curves.items():
        steps = sorted(set.intersection(*(set(c) for c in by_seed.values())))
        values = np.array([[by_seed[s][t] for t in steps] for s in by_seed])  # (seeds, steps)
        cis = np.array([bootstrap_ci(values[:, i]) for i in range(len(steps))])
        line, = ax.plot(steps, 100 * values.mean(0), marker="o", ms=3, label=label)
        ax.fill_between(steps, 100 * cis[:, 0], 100 * cis[:, 1], alpha=0.2, color=line.get_color())
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
