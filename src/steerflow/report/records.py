"""The report's JSON records: seeds grouped into (method, task) pairs, one record per pair (final
and best success over its finished seeds) and per (method, domain) that has every task of the
domain (stratified over tasks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .labels import one, task_domain, task_key
from .runs import SeedRun
from .stats import RESAMPLES, bootstrap_ci, stratified_bootstrap_ci


def task_record(label: str, runs: list[SeedRun], resamples: int = RESAMPLES) -> dict:
    """Final and best success of one (method, task) over its finished seeds."""
    runs = sorted(runs, key=lambda r: r.seed)
    final = [r.curve[r.steps] for r in runs]
    common = sorted(set.intersection(*(set(r.curve) for r in runs)))
    curve_mean = [float(np.mean([r.curve[t] for r in runs])) for t in common]
    best_step = common[int(np.argmax(curve_mean))]  # earliest step on ties
    best = [r.curve[best_step] for r in runs]
    r0 = runs[0]
    return {"kind": "task", "method": label, "agent": r0.agent, "impl": r0.impl, "task": r0.task,
            "domain": task_domain(r0.task),
            "preset": r0.preset, "steps": r0.steps, "seeds": [r.seed for r in runs], "final_success": final,
            "mean": float(np.mean(final)), "ci95": list(bootstrap_ci(final, resamples)),
            "best_success": float(np.mean(best)), "best_step": best_step, "best_per_seed": best,
            "best_ci95": list(bootstrap_ci(best, resamples)), "curve": [[t, m] for t, m in zip(common, curve_mean)],
            "episodes": _episodes(runs), "device": one(r.device for r in runs),
            "commit": one(r.commit for r in runs), "overrides": r0.overrides,
            "run_dirs": sorted({str(r.run_dir) for r in runs})}


def domain_record(label: str, domain: str, task_records: list[dict], resamples: int = RESAMPLES) -> dict:
    """Mean over a domain's tasks of the per-task seed means, with stratified bootstrap CIs (seeds
    resampled within each task). `final_success`: per seed (those present in every task, in seed
    order) the mean over tasks. Best: mean over tasks of each task's best success."""
    seeds = sorted(set.intersection(*(set(t["seeds"]) for t in task_records)))
    per_seed = [float(np.mean([t["final_success"][t["seeds"].index(s)] for t in task_records])) for s in seeds]
    finals = [t["final_success"] for t in task_records]
    bests = [t["best_per_seed"] for t in task_records]
    r0 = task_records[0]
    return {"kind": "domain", "method": label, "agent": r0["agent"], "task": domain, "domain": domain,
            "tasks": [t["task"] for t in task_records], "preset": r0["preset"], "steps": r0["steps"],
            "seeds": seeds, "final_success": per_seed,
            "mean": float(np.mean([np.mean(f) for f in finals])),
            "ci95": list(stratified_bootstrap_ci(finals, resamples)),
            "best_success": float(np.mean([t["best_success"] for t in task_records])),
            "best_step": {t["task"]: t["best_step"] for t in task_records},
            "best_ci95": list(stratified_bootstrap_ci(bests, resamples)),
            "episodes": _one_or_list(t["episodes"] for t in task_records),
            "device": one(d for t in task_records for d in t["device"].split("; ")),
            "commit": one(c for t in task_records for c in t["commit"].split("; ")),
            "overrides": r0["overrides"],
            "run_dirs": sorted({d for t in task_records for d in t["run_dirs"]})}


def _episodes(runs):
    uniq = sorted({r.episodes for r in runs})
    return uniq[0] if len(uniq) == 1 else uniq


def _one_or_list(values):
    flat = sorted({x for v in values for x in (v if isinstance(v, list) else [v])})
    return flat[0] if len(flat) == 1 else flat


@dataclass
class Aggregate:
    """What a report tabulates, plots and records, keyed by method label."""

    groups: dict[tuple[str, str], list[SeedRun]]  # (method, task) → its finished seeds
    incomplete: list[dict]  # the unfinished or failed seed runs, left out
    warnings: list[str]
    task_recs: dict[tuple[str, str], dict]  # (method, task) → task_record
    methods: list[str]
    tasks: list[str]  # unfinished ones too: they show as such
    domains: dict[str, list[str]]  # domain → its tasks
    domain_recs: dict[tuple[str, str], dict]  # (method, domain) → domain_record, where every task is there
    missing: dict[tuple[str, str], list[str]]  # (method, domain) → its tasks without finished seeds

    @property
    def records(self) -> list[dict]:
        """Task records, then domain records, by method."""
        return ([self.task_recs[(m, t)] for m in self.methods for t in self.tasks if (m, t) in self.task_recs]
                + [self.domain_recs[(m, d)] for m in self.methods for d in self.domains
                   if (m, d) in self.domain_recs])


def aggregate(runs: list[SeedRun], labels: list[str], malformed: list[dict], resamples: int = RESAMPLES) -> Aggregate:
    """Group the finished seeds of `runs` (labelled by method) and make their records; the
    unfinished ones and `malformed` directories become warnings. A seed of one (method, task) in
    two directories is a ValueError naming both."""
    groups, incomplete, warnings = _group_seeds(runs, labels, malformed)
    task_recs = {key: task_record(key[0], rs, resamples) for key, rs in groups.items()}
    methods = sorted({label for label in labels})
    tasks = sorted({r.task for r in runs}, key=task_key)
    domains: dict[str, list[str]] = {}
    for t in tasks:
        domains.setdefault(task_domain(t), []).append(t)
    domain_recs: dict[tuple[str, str], dict] = {}
    missing: dict[tuple[str, str], list[str]] = {}
    for m in methods:
        for dom, dom_tasks in domains.items():
            have = [task_recs[(m, t)] for t in dom_tasks if (m, t) in task_recs]
            if len(have) == len(dom_tasks):
                domain_recs[(m, dom)] = domain_record(m, dom, have, resamples)
            elif have:
                missing[(m, dom)] = [t for t in dom_tasks if (m, t) not in task_recs]
    return Aggregate(groups, incomplete, warnings, task_recs, methods, tasks, domains, domain_recs, missing)


def _group_seeds(runs, labels, malformed):
    groups: dict[tuple[str, str], list[SeedRun]] = {}
    warnings = [f"warning: cannot read run directory {m['run_dir']}, left out: {m['error']}" for m in malformed]
    incomplete = []
    seen: dict[tuple[str, str, int], Path] = {}
    for label, r in zip(labels, runs):
        if not r.finished:
            incomplete.append({"method": label, "task": r.task, "seed": r.seed, "run_dir": str(r.run_dir),
                               "last_step": r.last_step, "steps": r.steps, "status": r.status})
            warnings.append(f"warning: {label} on {r.task} seed {r.seed} is {r.status}, left out of the "
                            f"statistics: {r.run_dir}")
            continue
        key = (label, r.task, r.seed)
        if key in seen:
            raise ValueError(f"seed {r.seed} of {label} on {r.task} appears twice: in {seen[key]} and in "
                             f"{r.run_dir}; pass only one of them")
        seen[key] = r.run_dir
        groups.setdefault((label, r.task), []).append(r)
    return groups, incomplete, warnings
