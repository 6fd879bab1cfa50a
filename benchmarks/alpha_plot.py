"""α-sensitivity figure (LPS paper §V-C, Figure 6 analogue) from `steerflow sweep` run directories.

Reads the per-task records of `steerflow.report.build_report` (final success, 95% bootstrap CI
over seeds) for every agent whose runs set `alpha`, and draws success against α on a log axis,
one line per agent with its CI band. What α weighs differs by method (SPEC §4): QC-MFQL's
distillation term; LPS's and DSRL-NA's base (BC) loss, since they have no regulariser of their own.

    .venv/bin/python benchmarks/alpha_plot.py runs/baselines_cpu/alpha RUN_DIRS_AT_DEFAULT_ALPHA... --out OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerflow.report import build_report
from steerflow.runinfo import atomic_write_json


def run_alpha(record: dict) -> float | None:
    """α of a record: its override, else the agent's default stored in the run's config.json."""
    if "alpha" in record["overrides"]:
        return float(record["overrides"]["alpha"])
    dirs = record["run_dirs"] if isinstance(record["run_dirs"], list) else [record["run_dirs"]]
    alphas = {json.loads((Path(d) / "config.json").read_text())["agent_config"].get("alpha") for d in dirs}
    return float(alphas.pop()) if len(alphas) == 1 and None not in alphas else None


def alpha_table(records: list[dict]) -> dict[str, list[dict]]:
    """{agent: [{alpha, mean, ci95, seeds, final_success}, ...] sorted by α} from task records of
    agents that have an α (runs at the default α count at that value)."""
    rows: dict[str, list[dict]] = {}
    for rec in records:
        alpha = run_alpha(rec) if rec["kind"] == "task" else None
        if alpha is None or (rec["overrides"] and set(rec["overrides"]) != {"alpha"}):
            continue
        rows.setdefault(rec["agent"], []).append({
            "alpha": alpha, "task": rec["task"], "mean": rec["mean"],
            "ci95": rec["ci95"], "seeds": rec["seeds"], "final_success": rec["final_success"]})
    return {agent: sorted(r, key=lambda x: x["alpha"]) for agent, r in sorted(rows.items())}


def plot(table: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for agent, rows in table.items():
        alphas = [r["alpha"] for r in rows]
        mean = [100 * r["mean"] for r in rows]
        seeds = sorted({len(r["seeds"]) for r in rows})
        line, = ax.plot(alphas, mean, marker="o", ms=3, label=f"{agent} ({'/'.join(map(str, seeds))} seeds)")
        ax.fill_between(alphas, [100 * r["ci95"][0] for r in rows], [100 * r["ci95"][1] for r in rows],
                        alpha=0.2, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("α (regularisation / base-loss weight)")
    ax.set_ylabel("final success (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/alpha_cpu"))
    args = parser.parse_args()
    report = build_report(args.run_dirs, None, plots=False)
    table = alpha_table(report["records"])
    if not table:
        raise SystemExit("no finished runs with an `alpha` override under " + " ".join(args.run_dirs))
    tasks = sorted({r["task"] for rows in table.values() for r in rows})
    plot(table, args.out.with_suffix(".png"), f"α sensitivity, {', '.join(tasks)}")
    atomic_write_json(args.out.with_suffix(".json"), {"rows": table, "warnings": report["warnings"]})
    for agent, rows in table.items():
        cells = "  ".join(f"α={r['alpha']:g}: {100 * r['mean']:.0f} [{100 * r['ci95'][0]:.0f},{100 * r['ci95'][1]:.0f}]"
                          for r in rows)
        print(f"{agent:8s} {cells}")
    print(f"wrote {args.out.with_suffix('.png')} and .json")


if __name__ == "__main__":
    main()
