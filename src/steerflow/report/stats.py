"""Bootstrap confidence intervals of means over seeds (docs/algorithms.md#evaluation-protocol:
1000 resamples over seeds): plain, and stratified over tasks."""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000


def bootstrap_ci(values, resamples: int = RESAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean over seeds."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def stratified_bootstrap_ci(per_task: list, resamples: int = RESAMPLES, level: float = 0.95,
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
