"""Table of the frozen-base QPILOTS records: success per α, task and seed, and
the α the project's tuning rule selects.

    .venv/bin/python benchmarks/qpilots_summary.py [benchmarks/results/qpilots_cpu] [--json OUT]

Reads every `alpha_eval.json` (one trained critic evaluated at each α on the same 50 episode
seeds; `benchmarks/qpilots_alpha_eval.py`) under the directory. α = 0 is the frozen base itself;
records evaluated with `--best-of` add best-of-N selection on the same base and critic.
Per agent and critic size (`critic.num_critics`: the CPU protocol's 2 or the paper's 10; the records
of the two are separate rows): mean success and 95% bootstrap CI over seeds for every (task, α); the selected α is the
one with the best mean over the tuning tasks 2 and 4, ties to the smaller α — the rule
`steerflow report` applies to every swept hyperparameter (`select_hyperparameters`). No α is
selected until both tuning tasks have a record, and only α measured on every seed of its task compete.

`diagnostics.json` records (`benchmarks/qpilots_diagnostics.py`: offline values of each acting rule
under the steering critic and an independent judge) are averaged over seeds per (steering critic
size, task, rule) into the summary's `diagnostics`.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from steerflow.data.tasks import parse_task
from steerflow.report import TUNING_TASKS, bootstrap_ci, select_hyperparameters, task_domain


def task_number(task: str) -> int:
    return parse_task(task).task_id


def critic_count(rec: dict) -> int:
    """The ensemble size of a record's critic: its `critic.num_critics` override, else the agent's default."""
    if "critic.num_critics" in rec.get("overrides", {}):
        return int(rec["overrides"]["critic.num_critics"])
    from steerflow.agents import get_agent

    return get_agent(rec["agent"]).Config().critic.num_critics


def all_seeds(by_value: dict) -> set:
    """Every seed any cell of one task's row holds."""
    return set().union(*(cell["seeds"] for cell in by_value.values()))


def summarise(root: Path) -> dict:
    # (agent, critics, domain) -> task -> alpha -> seed -> success
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    best_of: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))  # same, N for α
    sources = []
    for path in sorted(root.glob("*/alpha_eval.json")):
        rec = json.loads(path.read_text())
        sources.append(str(path))
        group = (rec["agent"], critic_count(rec), task_domain(rec["task"]))
        for row in rec["results"]:
            for seed, success in zip(rec["seeds"], row["success"]):
                table[group][rec["task"]][row["alpha"]][seed] = success
        for row in rec.get("best_of_n", []):
            for seed, success in zip(rec["seeds"], row["success"]):
                best_of[group][rec["task"]][row["n"]][seed] = success

    def cells(tasks: dict) -> dict:  # task -> value -> {seeds, mean, ci95}
        return {task: {str(v): {"seeds": dict(sorted(s.items())), "mean": sum(s.values()) / len(s),
                                "ci95": list(bootstrap_ci(list(s.values())))} for v, s in sorted(by_value.items())}
                for task, by_value in sorted(tasks.items(), key=lambda kv: task_number(kv[0]))}

    out = []
    for (agent, critics, domain), tasks in sorted(table.items()):
        per_task = cells(tasks)
        selected = None
        if {task_number(t) for t in per_task} >= set(TUNING_TASKS):
            # each (task, α) as the report's per-task record of an `--set alpha=...` sweep, so the
            # selection is the report's own rule, not a copy of it
            # only α measured on every seed of its task compete: a mean over fewer seeds is not comparable
            recs = {(a, t): {"agent": agent, "impl": "steerflow", "preset": "cpu", "overrides": {"alpha": a},
                             "task": t, "domain": domain, "mean": cell["mean"]}
                    for t, by_alpha in per_task.items() for a, cell in by_alpha.items()
                    if set(cell["seeds"]) == all_seeds(by_alpha)}
            sel = select_hyperparameters(recs)[0]
            selected = {"alpha": sel["selected"]["alpha"],
                        "tuning_means": {c["values"]["alpha"]: c["tuning_mean"] for c in sel["candidates"]}}
        out.append({"agent": agent, "critics": critics, "domain": domain, "tasks": per_task, "selected": selected,
                    **({"best_of_n": cells(best_of[(agent, critics, domain)])}
                       if (agent, critics, domain) in best_of else {})})
    return {"sources": sources, "agents": out, "diagnostics": summarise_diagnostics(root)}


DIAGNOSTIC_COLUMNS = ("steer_value_delta", "judge_value_delta", "judge_raised", "nearest_rms", "clip_lost",
                      "clipped_coords")


def summarise_diagnostics(root: Path) -> list[dict]:
    """[{critics, judge_critics, task, rule, param, seeds, COLUMN: mean over seeds}] of every
    `*/diagnostics.json` under root, sorted by critics, task, rule and parameter."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.glob("*/diagnostics.json")):
        rec = json.loads(path.read_text())
        critics = (critic_count({"agent": "qpilots-u", "overrides": rec["steer_overrides"]}),
                   critic_count({"agent": "qpilots-u", "overrides": rec["judge_overrides"]}))
        for row in rec["rows"]:
            cell = cells[(*critics, rec["task"], row["rule"], row["param"])]
            cell["seeds"].append(rec["seed"])
            for column in DIAGNOSTIC_COLUMNS:
                if column in row:
                    cell[column].append(row[column])
    order = {"base": 0, "bon": 1, "steer": 2}
    out = []
    for (critics, judge, task, rule, param), cell in sorted(
            cells.items(), key=lambda kv: (kv[0][0], task_number(kv[0][2]), order[kv[0][3]], kv[0][4] or 0)):
        out.append({"critics": critics, "judge_critics": judge, "task": task, "rule": rule, "param": param,
                    "seeds": sorted(cell.pop("seeds")), **{c: sum(v) / len(v) for c, v in cell.items()}})
    return out


def diagnostics_markdown(rows: list[dict]) -> list[str]:
    """The diagnostics as one table: values are the critics' ψ differences to the base chunk."""
    lines = ["QPILOTS-U diagnostics on dataset states (mean over seeds): Δψ of the steering critic and of "
             "an independent judge against the base chunk from the same noise, states the judge rates above "
             "the base (%), RMS distance to the nearest base sample, share of the steering step the final "
             "clip removes (%)", "",
             "| critics (judge) | task | seeds | rule | Δψ own | Δψ judge | judge ↑ % | nearest | clip lost % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rule = "base" if r["rule"] == "base" else f"best-of-{r['param']}" if r["rule"] == "bon" else f"α={r['param']:g}"
        clip = f"{100 * r['clip_lost']:.0f}" if "clip_lost" in r else ""
        lines.append(f"| {r['critics']} ({r['judge_critics']}) | {r['task']} | {','.join(map(str, r['seeds']))} | "
                     f"{rule} | {r['steer_value_delta']:+.3f} | {r['judge_value_delta']:+.3f} | "
                     f"{100 * r['judge_raised']:.0f} | {r['nearest_rms']:.3f} | {clip} |")
    return lines


def _table(title: str, by_task: dict, column: str) -> list[str]:
    values = sorted({v for t in by_task.values() for v in t}, key=float)
    lines = [title, "", "| task | seeds | " + " | ".join(f"{column}={v}" for v in values) + " |",
             "|---|---|" + "---|" * len(values)]
    for task, by_value in by_task.items():
        seeds = sorted({s for cell in by_value.values() for s in cell["seeds"]})
        row = []
        for v in values:
            c = by_value.get(v)
            row.append("" if c is None else f"{100 * c['mean']:.0f}" + (
                f" [{100 * c['ci95'][0]:.0f}, {100 * c['ci95'][1]:.0f}]" if len(c["seeds"]) > 1 else ""))
        lines.append(f"| {task} | {','.join(map(str, seeds))} | " + " | ".join(row) + " |")
    return lines


def markdown(summary: dict) -> str:
    lines = []
    for entry in summary["agents"]:
        name = f"{entry['agent']}, {entry['critics']} critics ({entry['domain']})"
        lines += _table(f"{name}, success % by α (α = 0: the frozen base)",
                        entry["tasks"], "α")
        if "best_of_n" in entry:
            lines += [""] + _table(f"{name}: best-of-N unsteered base samples "
                                   "ranked by the same critic, success %", entry["best_of_n"], "N")
        sel = entry["selected"]
        lines += ["", f"selected α (best mean over tasks {', '.join(map(str, TUNING_TASKS))}): "
                  + (f"{sel['alpha']} (tuning means: " + ", ".join(f"{a}: {100 * m:.1f}" for a, m in
                                                                  sel["tuning_means"].items()) + ")"
                     if sel else "none yet (a tuning task has no record)"), ""]
    if summary.get("diagnostics"):
        lines += diagnostics_markdown(summary["diagnostics"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, nargs="?", default=Path("benchmarks/results/qpilots_cpu"))
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: not a directory of QPILOTS records")
    summary = summarise(args.root)
    if not summary["sources"]:
        raise SystemExit(f"{args.root}: no */alpha_eval.json records")
    print(markdown(summary))
    if args.json:
        from steerflow.runinfo import atomic_write_json
        atomic_write_json(args.json, summary)


if __name__ == "__main__":
    main()
