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
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 1000
TUNING_TASKS = (2, 4)  # manipulation domains (docs/algorithms.md#evaluation-protocol)


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


def read_curve(eval_csv: Path) -> dict[int, dict[int, float]]:
    """eval.csv → {seed: {step: success}} (a step evaluated twice, e.g. around a resume, keeps
    its last row). ValueError naming the file when it is malformed."""
    curve: dict[int, dict[int, float]] = {}
    with open(eval_csv, newline="") as f:
        try:
            reader = csv.DictReader(f)
            missing = {"step", "seed", "success"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"missing column(s) {sorted(missing)} in header {reader.fieldnames}")
            for row in reader:
                try:
                    curve.setdefault(int(row["seed"]), {})[int(row["step"])] = float(row["success"])
                except (TypeError, ValueError) as err:
                    raise ValueError(f"line {reader.line_num}: {err}") from err
        except (ValueError, csv.Error) as err:
            raise ValueError(f"malformed {eval_csv}: {err}; expected columns step, seed, success "
                             "as written by `steerflow train`") from err
    return curve


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


# --------------------------------------------------------------------------- reading run directories

@dataclass
class SeedRun:
    """One seed of one run directory."""

    run_dir: Path
    agent: str
    task: str
    preset: str
    overrides: dict
    steps: int  # configured train_config.steps
    seed: int
    curve: dict[int, float]  # eval step → success
    episodes: int
    device: str
    commit: str
    impl: str = "steerflow"  # "reference": a reference implementation's run (benchmarks/parity)
    failed: str | None = None  # why the run failed (failed.json), e.g. "diverged at step 140"

    @property
    def last_step(self) -> int:
        return max(self.curve, default=0)

    @property
    def finished(self) -> bool:
        return self.failed is None and self.steps > 0 and self.steps in self.curve and self.last_step == self.steps

    @property
    def status(self) -> str:
        if self.failed is not None:
            return f"failed ({self.failed})"
        if self.last_step > self.steps:
            return f"inconsistent (evaluated at step {self.last_step}, configured {self.steps} steps)"
        return f"incomplete ({self.last_step}/{self.steps} steps)"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed {path}: not valid JSON ({err})") from err


def _looks_like_run_config(path: Path) -> bool:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("run"), dict) and "train_config" in cfg


def load_run(run_dir: str | os.PathLike) -> list[SeedRun]:
    """Every seed of a run directory, with its evaluation curve so far."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {cfg_path} does not exist")
    cfg = _read_json(cfg_path)
    try:
        run = cfg["run"]
        agent, task = run["agent"], run["task"]
        if not (isinstance(agent, str) and isinstance(task, str)):
            raise TypeError("run.agent and run.task must be strings")
        seeds = [int(s) for s in run["seeds"]]
        steps = int(cfg["train_config"]["steps"])
        overrides = dict(run.get("overrides") or {})
        if run.get("base_from"):  # the flow fields and train_base come from the frozen base: name it instead
            overrides = {k: v for k, v in overrides.items() if not (k.startswith("flow.") or k == "train_base")}
            overrides["base_from"] = Path(run["base_from"]).name
        preset = str(run.get("preset", "?"))
        episodes = int(cfg["train_config"].get("eval_episodes", 0))
        impl = str(run.get("impl", "steerflow"))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed {cfg_path}: {type(err).__name__}: {err}; expected "
                         "{'run': {agent, task, seeds, preset, overrides}, 'train_config': {steps, ...}} "
                         "as written by `steerflow train`") from err
    csv_path = run_dir / "eval.csv"
    curves = read_curve(csv_path) if csv_path.exists() else {}
    stray = sorted(set(curves) - set(seeds))
    if stray:
        raise ValueError(f"malformed {csv_path}: seed(s) {stray} are not among the seeds {seeds} of {cfg_path}")
    meta = {}
    for name in ("final.json", "run_info.json"):  # run_info.json wins for device and commit
        if (run_dir / name).is_file():
            data = _read_json(run_dir / name)
            if isinstance(data, dict):
                meta.update({k: data[k] for k in ("device", "commit", "episodes") if k in data})
    if "episodes" in meta:
        episodes = int(meta["episodes"])
    if int(cfg["train_config"].get("online_steps", 0)):  # an online phase ends where its final.json says
        final = _read_json(run_dir / "final.json") if (run_dir / "final.json").is_file() else None
        steps = int(final["steps"]) if isinstance(final, dict) and "online_env_steps" in final else max(
            (t for c in curves.values() for t in c), default=0) + 1  # unfinished: its end is not known yet
    failed = None
    if (run_dir / "failed.json").is_file():
        info = _read_json(run_dir / "failed.json")
        info = info if isinstance(info, dict) else {}
        names = sorted(info.get("losses") or {})
        losses = ", ".join([k for k in names if "loss" in k] or names) or "losses"
        failed = f"{info.get('status', 'failed')}: non-finite {losses} at step {info.get('step', '?')}"
    return [SeedRun(run_dir=run_dir, agent=agent, task=task, preset=preset, overrides=overrides, steps=steps,
                    seed=s, curve=curves.get(s, {}), episodes=episodes, device=str(meta.get("device", "unknown")),
                    commit=str(meta.get("commit", "unknown")), impl=impl, failed=failed) for s in seeds]


_SKIP_DIRS = {"checkpoints", "evals", "__pycache__", "node_modules"}


def find_run_dirs(paths) -> list[Path]:
    """Run directories given directly or found (recursively) under the given directories."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no run directories given")
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if not p.is_dir():
            raise ValueError(f"{p} is not a directory; pass run directories or directories that contain them")
        before = len(found)
        for root, dirs, files in os.walk(p):
            here = Path(root)
            if "config.json" in files and ({"eval.csv", "run_info.json", "metrics.csv"} & set(files)
                                           or _looks_like_run_config(here / "config.json")):
                found.setdefault(here.resolve(), None)
                dirs[:] = []  # a run directory's checkpoints/evals hold no further runs
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        if len(found) == before and not any(f.is_relative_to(p.resolve()) for f in found):
            raise FileNotFoundError(f"{p} contains no run directory (searched recursively for a config.json "
                                    "with an eval.csv beside it, as written by `steerflow train`)")
    return list(found)


# --------------------------------------------------------------------------- naming and grouping

_TASK_RE = re.compile(r"^(?P<domain>.+)-task(?P<n>\d+)(?P<suffix>(?:-[A-Za-z0-9_]+)*)$")


def task_domain(task: str) -> str:
    """`cube-single-task2` → `cube-single`, `scene-task1-sparse` → `scene-sparse` (as `parse_task`
    reads the name; unknown domains are split the same way)."""
    from steerflow.data.tasks import parse_task

    try:
        spec = parse_task(task)
        return spec.domain + ("-sparse" if spec.sparse else "")
    except ValueError:
        m = _TASK_RE.match(task)
        return m.group("domain") + m.group("suffix") if m else task


def _task_key(task: str):
    m = _TASK_RE.match(task)
    return (task_domain(task), int(m.group("n")) if m else 0, task)


def _short_task(task: str) -> str:
    m = _TASK_RE.match(task)
    return f"task{m.group('n')}" if m else task


def _fmt_value(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def method_labels(runs: list[SeedRun]) -> list[str]:
    """Label per seed run: agent (+ ` [reference]` for a reference implementation's run) + its
    non-empty overrides, + preset when the runs mix presets, + steps when one such method was
    trained for different step counts."""
    mix_presets = len({r.preset for r in runs}) > 1
    base = [r.agent + (f" [{r.impl}]" if r.impl != "steerflow" else "")
            + "".join(f" {k}={_fmt_value(v)}" for k, v in sorted(r.overrides.items()))
            + (f" preset={r.preset}" if mix_presets else "") for r in runs]
    steps_of: dict[str, set] = {}
    for b, r in zip(base, runs):
        steps_of.setdefault(b, set()).add(r.steps)
    return [b + (f" steps={r.steps}" if len(steps_of[b]) > 1 else "") for b, r in zip(base, runs)]


def _one(values, join: str = "; "):
    uniq = sorted({str(v) for v in values})
    return uniq[0] if len(uniq) == 1 else join.join(uniq)


def _episodes(runs):
    uniq = sorted({r.episodes for r in runs})
    return uniq[0] if len(uniq) == 1 else uniq


# --------------------------------------------------------------------------- statistics

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
            "episodes": _episodes(runs), "device": _one(r.device for r in runs),
            "commit": _one(r.commit for r in runs), "overrides": r0.overrides,
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
            "device": _one(d for t in task_records for d in t["device"].split("; ")),
            "commit": _one(c for t in task_records for c in t["commit"].split("; ")),
            "overrides": r0["overrides"],
            "run_dirs": sorted({d for t in task_records for d in t["run_dirs"]})}


def _one_or_list(values):
    flat = sorted({x for v in values for x in (v if isinstance(v, list) else [v])})
    return flat[0] if len(flat) == 1 else flat


# --------------------------------------------------------------------------- the report

def _pct(mean: float, ci) -> str:
    return f"{100 * mean:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _kstep(step: int) -> str:
    if step >= 1_000_000 and step % 100_000 == 0:
        return f"{step / 1e6:g}M"
    if step >= 1000 and step % 100 == 0:
        return f"{step / 1e3:g}K"
    return str(step)


def _range(values) -> str:
    values = sorted(set(values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _pending(method: str, task: str, incomplete: list[dict]) -> str:
    """Table cell for a (method, task) without finished seeds."""
    pend = [i for i in incomplete if i["method"] == method and i["task"] == task]
    if not pend:
        return "—"
    if len(pend) == 1:
        return pend[0]["status"]
    return f"incomplete ({_range(i['last_step'] for i in pend)}/{pend[0]['steps']} steps, {len(pend)} seeds)"


def _commits(runs) -> str:
    """Short commit hashes with the number of seed runs trained at each."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.commit] = counts.get(r.commit, 0) + 1
    short = {c: re.sub(r"^([0-9a-f]{12})[0-9a-f]{28}", r"\1", c) for c in counts}
    if len(counts) == 1:
        return short[next(iter(counts))]
    return ", ".join(f"{short[c]} ({n} seed runs)" for c, n in sorted(counts.items()))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def select_hyperparameters(task_recs: dict, tuning_tasks=TUNING_TASKS) -> list[dict]:
    """One selection record per (agent, impl, preset, fixed overrides, domain) whose runs sweep
    one or more `--set` keys over ≥ 2 value combinations, each measured on every tuning task of
    the domain present in the runs (module docstring)."""
    by_agent: dict[tuple, list[dict]] = {}
    for rec in task_recs.values():
        by_agent.setdefault((rec["agent"], rec["impl"], rec["preset"]), []).append(rec)
    selections = []
    for (agent, impl, preset), recs in sorted(by_agent.items()):
        keys = sorted({k for r in recs for k in r["overrides"]})
        swept = [k for k in keys if len({_fmt_value(r["overrides"].get(k, "default")) for r in recs}) > 1]
        if not swept:
            continue
        groups: dict[tuple, dict[tuple, dict[str, float]]] = {}
        for r in recs:
            fixed = tuple((k, _fmt_value(r["overrides"][k])) for k in keys if k not in swept and k in r["overrides"])
            n = _task_number(r["task"])
            if n in tuning_tasks:
                value = tuple(_fmt_value(r["overrides"].get(k, "default")) for k in swept)
                groups.setdefault((r["domain"], fixed), {}).setdefault(value, {})[r["task"]] = r["mean"]
        for (domain, fixed), candidates in sorted(groups.items()):
            tasks = sorted({t for c in candidates.values() for t in c}, key=_task_key)
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


def _task_number(task: str) -> int:
    m = _TASK_RE.match(task)
    return int(m.group("n")) if m else 0


def _value_order(values: tuple) -> tuple:
    """Numeric values in numeric order, then anything else as text."""
    def key(v):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return tuple(key(v) for v in values)


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


def build_report(run_dirs, out: str | os.PathLike | None = "report", resamples: int = RESAMPLES,
                 plots: bool = True) -> dict:
    """Aggregate run directories into `report.md`, `records.json` and learning-curve PNGs under
    `out` (nothing is written when `out` is None). Returns {"records", "markdown", "warnings",
    "incomplete", "files"}."""
    dirs = find_run_dirs(run_dirs)
    runs, malformed = [], []
    for d in dirs:
        try:
            runs += load_run(d)
        except (ValueError, OSError, KeyError, TypeError) as err:  # listed, never fatal
            malformed.append({"run_dir": str(d), "error": str(err)})
    labels = method_labels(runs)

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

    task_recs = {key: task_record(key[0], rs, resamples) for key, rs in groups.items()}
    methods = sorted({label for label in labels})
    tasks = sorted({r.task for r in runs}, key=_task_key)  # unfinished ones too: they show as such
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

    records = [task_recs[(m, t)] for m in methods for t in tasks if (m, t) in task_recs]
    records += [domain_recs[(m, d)] for m in methods for d in domains if (m, d) in domain_recs]
    selections = select_hyperparameters(task_recs)
    records += selections
    markdown = _markdown(runs, labels, dirs, methods, domains, task_recs, domain_recs, missing, incomplete, warnings,
                         resamples, plots and out is not None)
    markdown += "\n" + "\n".join(_selection_markdown(selections)) if selections else ""

    files = []
    if out is not None:
        from steerflow.runinfo import atomic_write_bytes, atomic_write_json

        out = Path(out)
        atomic_write_bytes(out / "report.md", markdown.encode())
        atomic_write_json(out / "records.json", records)
        files += [out / "report.md", out / "records.json"]
        if plots:
            for t in tasks:
                curves = {m: {r.seed: r.curve for r in groups[(m, t)]} for m in methods if (m, t) in groups}
                if not curves:
                    continue
                n = _range(len(c) for c in curves.values())
                files.append(out / f"curves_{_safe(t)}.png")
                plot_curves(curves, files[-1], title=f"{t}: mean over {n} seeds, 95% bootstrap CI", ymax=None)
            for dom, dom_tasks in domains.items():
                curves = {}
                for m in methods:
                    if (m, dom) not in domain_recs:
                        continue
                    for s in domain_recs[(m, dom)]["seeds"]:
                        by_task = [next(r.curve for r in groups[(m, t)] if r.seed == s) for t in dom_tasks]
                        common = sorted(set.intersection(*(set(c) for c in by_task)))
                        curves.setdefault(m, {})[s] = {st: float(np.mean([c[st] for c in by_task]))
                                                       for st in common}
                if curves:
                    n = _range(len(c) for c in curves.values())
                    files.append(out / f"curves_{_safe(dom)}.png")
                    plot_curves(curves, files[-1], title=f"{dom}: mean over {len(dom_tasks)} tasks, "
                                                         f"{n} seeds, 95% bootstrap CI", ymax=None)
    return {"records": records, "markdown": markdown, "warnings": warnings, "incomplete": incomplete,
            "selections": selections, "malformed": malformed, "files": [str(f) for f in files]}


def _markdown(runs, labels, dirs, methods, domains, task_recs, domain_recs, missing, incomplete, warnings, resamples,
              with_plots) -> str:
    from steerflow.data.tasks import NUM_TASKS

    done = [r for r in runs if r.finished]
    recs = list(task_recs.values())
    lines = ["# steerflow report", ""]
    lines += [f"- runs: {len(dirs)} run directories, {len(done)} finished seed runs "
              f"({len(incomplete)} unfinished), {len(methods)} methods, {len(recs)} (method, task) pairs",
              f"- seeds per (method, task): {_range(len(r['seeds']) for r in recs) if recs else '—'}",
              f"- evaluation episodes per seed: {_range(r.episodes for r in done) if done else '—'}",
              f"- training steps: {_range(r.steps for r in done) if done else '—'}",
              f"- preset: {_one(r.preset for r in runs) if runs else '—'}",
              f"- commits: {_commits(done) if done else '—'}",
              f"- device(s): {_one(r.device for r in done) if done else '—'}", ""]
    if warnings:
        lines += [f"- {w}" for w in warnings] + [""]
    if not recs:
        lines += ["No finished runs: nothing to aggregate.", ""]
    for dom, dom_tasks in domains.items():
        cover = "" if len(dom_tasks) == NUM_TASKS else f" (over {len(dom_tasks)} of {NUM_TASKS} tasks)"
        rows = [m for m in methods if any(r.task in dom_tasks for r, label in zip(runs, labels) if label == m)]
        head = ["method", "seeds", *(_short_task(t) for t in dom_tasks), f"{dom} mean{cover}"]
        sep = ["---"] * len(head)
        for kind in ("final", "best"):
            if kind == "final":
                lines += [f"## {dom}", "",
                          f"Final success (%) at the last evaluation step: mean over seeds [95% bootstrap CI, "
                          f"{resamples} resamples over seeds]; domain column: mean over the tasks "
                          f"[95% stratified bootstrap CI, seeds resampled within each task].", ""]
            else:
                lines += [f"Best success (%): per task, the success at the evaluation step with the highest "
                          f"seed-mean success (that step after @), same CIs over seeds at that step; domain "
                          f"column: mean over the tasks of these per-task best values [stratified CI]. "
                          f"Optimistic: the step is chosen on the evaluation results themselves.", ""]
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
            for m in rows:
                have = [len(task_recs[(m, t)]["seeds"]) for t in dom_tasks if (m, t) in task_recs]
                cells = [m, _range(have) if have else "0"]
                for t in dom_tasks:
                    rec = task_recs.get((m, t))
                    if rec is None:
                        cells.append(_pending(m, t, incomplete))
                    elif kind == "final":
                        cells.append(_pct(rec["mean"], rec["ci95"]))
                    else:
                        cells.append(f"{_pct(rec['best_success'], rec['best_ci95'])} @{_kstep(rec['best_step'])}")
                drec = domain_recs.get((m, dom))
                if drec is None:
                    cells.append("missing " + ", ".join(_short_task(t) for t in missing.get((m, dom), dom_tasks)))
                else:
                    mean, ci = ((drec["mean"], drec["ci95"]) if kind == "final"
                                else (drec["best_success"], drec["best_ci95"]))
                    cells.append(f"**{100 * mean:.1f}** [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        if with_plots:
            if any((m, dom) in domain_recs for m in methods):
                lines += [f"![{dom} learning curves](curves_{_safe(dom)}.png)", "",
                          "Domain curve band: bootstrap over the per-seed means over tasks (the table's domain "
                          "CI is stratified).", ""]
            links = [f"[{_short_task(t)}](curves_{_safe(t)}.png)" for t in dom_tasks
                     if any(key[1] == t for key in task_recs)]
            if links:
                lines += ["Learning curves per task: " + ", ".join(links), ""]
    return "\n".join(lines)
