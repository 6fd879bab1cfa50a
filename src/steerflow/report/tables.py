"""The Markdown of `report.md`: a summary of the runs, per domain a final-success and a
best-success table (mean [95% CI] per task, and the domain mean), and the selected hyperparameters."""

from __future__ import annotations

import re

from steerflow.data.tasks import NUM_TASKS

from .labels import one, safe_name, short_task, value_range
from .records import Aggregate
from .selection import TUNING_TASKS

_FINAL = ("Final success (%) at the last evaluation step: mean over seeds [95% bootstrap CI, {resamples} "
          "resamples over seeds]; domain column: mean over the tasks [95% stratified bootstrap CI, seeds "
          "resampled within each task].")
_BEST = ("Best success (%): per task, the success at the evaluation step with the highest seed-mean success "
         "(that step after @), same CIs over seeds at that step; domain column: mean over the tasks of these "
         "per-task best values [stratified CI]. Optimistic: the step is chosen on the evaluation results themselves.")


def report_markdown(runs: list, labels: list[str], n_dirs: int, agg: Aggregate, selections: list[dict],
                    resamples: int, with_plots: bool) -> str:
    """The whole `report.md`; `with_plots`: link the curves' PNGs."""
    lines = _summary(runs, n_dirs, agg)
    for dom, dom_tasks in agg.domains.items():
        lines += _domain_section(runs, labels, agg, dom, dom_tasks, resamples, with_plots)
    markdown = "\n".join(lines)
    return markdown + ("\n" + "\n".join(_selection_markdown(selections)) if selections else "")


def _summary(runs, n_dirs: int, agg: Aggregate) -> list[str]:
    done = [r for r in runs if r.finished]
    recs = list(agg.task_recs.values())
    lines = ["# steerflow report", "",
             f"- runs: {n_dirs} run directories, {len(done)} finished seed runs "
             f"({len(agg.incomplete)} unfinished), {len(agg.methods)} methods, {len(recs)} (method, task) pairs",
             f"- seeds per (method, task): {value_range(len(r['seeds']) for r in recs) if recs else '—'}",
             f"- evaluation episodes per seed: {value_range(r.episodes for r in done) if done else '—'}",
             f"- training steps: {value_range(r.steps for r in done) if done else '—'}",
             f"- preset: {one(r.preset for r in runs) if runs else '—'}",
             f"- commits: {_commits(done) if done else '—'}",
             f"- device(s): {one(r.device for r in done) if done else '—'}", ""]
    if agg.warnings:
        lines += [f"- {w}" for w in agg.warnings] + [""]
    if not recs:
        lines += ["No finished runs: nothing to aggregate.", ""]
    return lines


def _domain_section(runs, labels, agg: Aggregate, dom: str, dom_tasks: list[str], resamples: int,
                    with_plots: bool) -> list[str]:
    """`## domain`, its final and best tables, and links to its curves."""
    cover = "" if len(dom_tasks) == NUM_TASKS else f" (over {len(dom_tasks)} of {NUM_TASKS} tasks)"
    rows = [m for m in agg.methods if any(r.task in dom_tasks for r, label in zip(runs, labels) if label == m)]
    head = ["method", "seeds", *(short_task(t) for t in dom_tasks), f"{dom} mean{cover}"]
    lines = [f"## {dom}", "", _FINAL.format(resamples=resamples), ""]
    lines += _table("final", head, rows, agg, dom, dom_tasks)
    lines += [_BEST, ""] + _table("best", head, rows, agg, dom, dom_tasks)
    if with_plots:
        if any((m, dom) in agg.domain_recs for m in agg.methods):
            lines += [f"![{dom} learning curves](curves_{safe_name(dom)}.png)", "",
                      "Domain curve band: bootstrap over the per-seed means over tasks (the table's domain "
                      "CI is stratified).", ""]
        links = [f"[{short_task(t)}](curves_{safe_name(t)}.png)" for t in dom_tasks
                 if any(key[1] == t for key in agg.task_recs)]
        if links:
            lines += ["Learning curves per task: " + ", ".join(links), ""]
    return lines


def _table(kind: str, head: list[str], rows: list[str], agg: Aggregate, dom: str, dom_tasks: list[str]) -> list[str]:
    """The `final` or `best` table of a domain, a blank line after it."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for m in rows:
        have = [len(agg.task_recs[(m, t)]["seeds"]) for t in dom_tasks if (m, t) in agg.task_recs]
        cells = [m, value_range(have) if have else "0"]
        for t in dom_tasks:
            rec = agg.task_recs.get((m, t))
            if rec is None:
                cells.append(_pending(m, t, agg.incomplete))
            elif kind == "final":
                cells.append(_pct(rec["mean"], rec["ci95"]))
            else:
                cells.append(f"{_pct(rec['best_success'], rec['best_ci95'])} @{_kstep(rec['best_step'])}")
        drec = agg.domain_recs.get((m, dom))
        if drec is None:
            cells.append("missing " + ", ".join(short_task(t) for t in agg.missing.get((m, dom), dom_tasks)))
        else:
            mean, ci = (drec["mean"], drec["ci95"]) if kind == "final" else (drec["best_success"], drec["best_ci95"])
            cells.append(f"**{100 * mean:.1f}** [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _pct(mean: float, ci) -> str:
    return f"{100 * mean:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _kstep(step: int) -> str:
    if step >= 1_000_000 and step % 100_000 == 0:
        return f"{step / 1e6:g}M"
    if step >= 1000 and step % 100 == 0:
        return f"{step / 1e3:g}K"
    return str(step)


def _pending(method: str, task: str, incomplete: list[dict]) -> str:
    """Table cell for a (method, task) without finished seeds."""
    pend = [i for i in incomplete if i["method"] == method and i["task"] == task]
    if not pend:
        return "—"
    if len(pend) == 1:
        return pend[0]["status"]
    return f"incomplete ({value_range(i['last_step'] for i in pend)}/{pend[0]['steps']} steps, {len(pend)} seeds)"


def _commits(runs) -> str:
    """Short commit hashes with the number of seed runs trained at each."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.commit] = counts.get(r.commit, 0) + 1
    short = {c: re.sub(r"^([0-9a-f]{12})[0-9a-f]{28}", r"\1", c) for c in counts}
    if len(counts) == 1:
        return short[next(iter(counts))]
    return ", ".join(f"{short[c]} ({n} seed runs)" for c, n in sorted(counts.items()))


def _selection_markdown(selections: list[dict]) -> list[str]:
    if not selections:
        return []
    lines = ["## Selected hyperparameters", "",
             "Per domain, the swept `--set` values with the best mean final success over the tuning tasks "
             f"({', '.join(f'task{n}' for n in TUNING_TASKS)}); reuse them on all five tasks with fresh seeds.", "",
             "| agent | domain | swept | candidates (tuning mean %) | selected |", "|---|---|---|---|---|"]
    for sel in selections:
        name = sel["agent"] + (f" [{sel['impl']}]" if sel["impl"] != "steerflow" else "")
        name += "".join(f" {k}={v}" for k, v in sel["fixed_overrides"].items())
        cands = ", ".join(" ".join(c["values"].values()) + f": {100 * c['tuning_mean']:.1f}" for c in sel["candidates"])
        chosen = " ".join(f"{k}={v}" for k, v in sel["selected"].items())
        lines.append(f"| {name} | {sel['domain']} | {', '.join(sel['keys'])} | {cands} | **{chosen}** |")
    return lines + [""]
