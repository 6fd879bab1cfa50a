"""Hyperparameter selection (`select_hyperparameters`), the one rule every tuned method uses
(docs/algorithms.md#evaluation-protocol, the QC/QAM/QPILOTS protocol): within an agent, the `--set`
keys whose values differ between runs are the swept ones; per domain, each of their value
combinations is scored by its mean final success over the tuning tasks (2 and 4) and the best is
selected (ties: the first in value order). The selection is printed in the report and recorded in
records.json (`"kind": "selection"`)."""

from __future__ import annotations

import numpy as np

from .labels import fmt_value, task_key, task_number

TUNING_TASKS = (2, 4)  # manipulation domains (docs/algorithms.md#evaluation-protocol)


def select_hyperparameters(task_recs: dict, tuning_tasks=TUNING_TASKS) -> list[dict]:
    """One selection record per (agent, impl, preset, fixed overrides, domain) whose runs sweep
    one or more `--set` keys over ≥ 2 value combinations, each measured on every tuning task of
    the domain present in the runs (`steerflow.report.selection`'s docstring)."""
    by_agent: dict[tuple, list[dict]] = {}
    for rec in task_recs.values():
        by_agent.setdefault((rec["agent"], rec["impl"], rec["preset"]), []).append(rec)
    selections = []
    for (agent, impl, preset), recs in sorted(by_agent.items()):
        keys = sorted({k for r in recs for k in r["overrides"]})
        swept = [k for k in keys if len({fmt_value(r["overrides"].get(k, "default")) for r in recs}) > 1]
        if not swept:
            continue
        for (domain, fixed), candidates in sorted(_candidates(recs, keys, swept, tuning_tasks).items()):
            tasks = sorted({t for c in candidates.values() for t in c}, key=task_key)
            scored = {v: float(np.mean([c[t] for t in tasks])) for v, c in candidates.items() if set(c) == set(tasks)}
            if len(scored) < 2:
                continue
            order = sorted(scored, key=_value_order)
            best = max(order, key=lambda v: scored[v])  # max keeps the first of equal scores
            selections.append({
                "kind": "selection", "agent": agent, "impl": impl, "preset": preset, "domain": domain,
                "fixed_overrides": dict(fixed), "keys": swept, "tuning_tasks": tasks,
                "candidates": [{"values": dict(zip(swept, v)), "tuning_mean": scored[v]} for v in order],
                "selected": dict(zip(swept, best)), "selected_mean": scored[best],
                "incomplete": sorted(" ".join(v) for v in candidates if v not in scored)})
    return selections


def _candidates(recs, keys, swept, tuning_tasks) -> dict[tuple, dict[tuple, dict[str, float]]]:
    """(domain, fixed overrides) → swept values → {tuning task: mean final success}."""
    groups: dict[tuple, dict[tuple, dict[str, float]]] = {}
    for r in recs:
        fixed = tuple((k, fmt_value(r["overrides"][k])) for k in keys if k not in swept and k in r["overrides"])
        if task_number(r["task"]) in tuning_tasks:
            value = tuple(fmt_value(r["overrides"].get(k, "default")) for k in swept)
            groups.setdefault((r["domain"], fixed), {}).setdefault(value, {})[r["task"]] = r["mean"]
    return groups


def _value_order(values: tuple) -> tuple:
    """Numeric values in numeric order, then anything else as text."""
    def key(v):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return tuple(key(v) for v in values)
