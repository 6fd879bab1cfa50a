"""Learning-curve plots: mean success over seeds with a 95% bootstrap band per method, one PNG per
task and one per domain (seeds' means over the domain's tasks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .labels import safe_name, value_range
from .records import Aggregate
from .stats import bootstrap_ci


def plot_curves(curves: dict[str, dict[int, dict[int, float]]], path: Path, title: str = "",
                ymax: float | None = 102, online_from: int | None = None) -> None:
    """One line per label: mean success over seeds with a 95% bootstrap band (written atomically).
    `ymax=None` fits the y axis to the bands (at least 0-10%) instead of the full 0-100%;
    `online_from` marks the step where an online phase starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from steerflow.runinfo import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    top = 10.0
    for label, by_seed in curves.items():
        if not by_seed:
            continue
        steps = sorted(set.intersection(*(set(c) for c in by_seed.values())))
        if not steps:
            continue
        values = np.array([[by_seed[s][t] for t in steps] for s in by_seed])  # (seeds, steps)
        cis = np.array([bootstrap_ci(values[:, i]) for i in range(len(steps))])
        line, = ax.plot(steps, 100 * values.mean(0), marker="o", ms=3, label=f"{label} ({len(by_seed)} seeds)")
        ax.fill_between(steps, 100 * cis[:, 0], 100 * cis[:, 1], alpha=0.2, color=line.get_color())
        top = max(top, 100 * float(cis[:, 1].max()), 100 * float(values.mean(0).max()))
    if online_from is not None:
        ax.axvline(online_from, color="k", ls="--", lw=0.8)
        ax.annotate("online →", (online_from, 0.95), xycoords=("data", "axes fraction"), fontsize=7,
                    xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-2 if ymax is not None else -0.02 * top, ymax if ymax is not None else min(102.0, 1.15 * top))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_curve_plots(out: Path, agg: Aggregate) -> list[Path]:
    """`curves_<task>.png` per task with finished seeds, `curves_<domain>.png` per domain with a
    domain record; returns the files written."""
    files = []
    for t in agg.tasks:
        curves = {m: {r.seed: r.curve for r in agg.groups[(m, t)]} for m in agg.methods if (m, t) in agg.groups}
        if not curves:
            continue
        n = value_range(len(c) for c in curves.values())
        files.append(out / f"curves_{safe_name(t)}.png")
        plot_curves(curves, files[-1], title=f"{t}: mean over {n} seeds, 95% bootstrap CI", ymax=None)
    for dom, dom_tasks in agg.domains.items():
        curves = _domain_curves(agg, dom, dom_tasks)
        if curves:
            n = value_range(len(c) for c in curves.values())
            files.append(out / f"curves_{safe_name(dom)}.png")
            plot_curves(curves, files[-1], title=f"{dom}: mean over {len(dom_tasks)} tasks, "
                                                 f"{n} seeds, 95% bootstrap CI", ymax=None)
    return files


def _domain_curves(agg: Aggregate, dom: str, dom_tasks: list[str]) -> dict[str, dict[int, dict[int, float]]]:
    """Per method with a domain record, per seed: the mean over the domain's tasks at their common steps."""
    curves = {}
    for m in agg.methods:
        if (m, dom) not in agg.domain_recs:
            continue
        for s in agg.domain_recs[(m, dom)]["seeds"]:
            by_task = [next(r.curve for r in agg.groups[(m, t)] if r.seed == s) for t in dom_tasks]
            common = sorted(set.intersection(*(set(c) for c in by_task)))
            curves.setdefault(m, {})[s] = {st: float(np.mean([c[st] for c in by_task])) for st in common}
    return curves
