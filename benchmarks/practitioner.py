"""The robot practitioner's loop, measured: a few tens of teleoperation-like demos without rewards
→ offline policy → online fine-tuning in the env, LPS against behaviour cloning.

Test beds (`--testbed`): `fetch-pick-and-place` (Gymnasium-Robotics' FetchPickAndPlace, a scripted
operator, evaluated and fine-tuned through `--env steerflow.envs.fetch:pick_and_place`) and
`cube-single-task2` (OGBench's oracle, evaluated in its env). The demos (`steerflow.demos`, with the
`--artifacts` of teleoperation: pauses, hesitation, micro-corrections, jitter, premature release)
are written to robomimic HDF5 without rewards and imported like a user's file, then every row is
trained with `--reward sparse-success` (the CPU protocol's nets: 2x256, batch 128; every seed
vmapped in one process), evaluated every `--eval-every` steps in the env through the stored
normalisation, and — with `--online-steps N` — continued online from its last checkpoint
(`--from`) with balanced batches (`online_ratio` 0.5, one update per env step). Prints success per
seed with 95% bootstrap CIs and writes the rows into `--results` (default
benchmarks/results/practitioner_loop_<cpu|gpu>.json), keyed `TESTBED/DEMOS/ARTIFACTS/ROW@STEPS[+onN]`,
each with its whole evaluation curve, the machine and the wall time.

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/practitioner.py --testbed fetch-pick-and-place \\
        --rows bc-mf,lps --steps 20000 --eval-every 5000 --online-steps 10000
    .venv/bin/python benchmarks/practitioner.py --testbed cube-single-task2 --rows lps --steps 100000 --eval-every 10000

Rows accumulate: an invocation replaces the rows it runs and keeps the others. Runs go to
`--out/<key>` and resume when re-invoked. `--report` writes the results page from the records
alone (nothing is trained; tests/test_practitioner.py checks the committed page regenerates):

    .venv/bin/python benchmarks/practitioner.py --report docs/results/practitioner.md
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# row name -> (agent, agent-config overrides)
ROWS = {"bc-mf": ("bc-mf", {}), "bc-fm": ("bc-fm", {}), "lps": ("lps", {}), "lpsd": ("lpsd", {}),
        "dsrl-na": ("dsrl-na", {}), "qc-fql": ("qc-fql", {}),
        "lps-pessimistic": ("lps", {"critic": "qpilots"}),  # 10 critics, mean − 0.5·std, climbed by the actor
        "lps-min": ("lps", {"critic.aggregate": "min"}),  # the min of the 2 critics: in the targets and climbed by the actor
        "lps-clip": ("lps", {"clip_actor_chunk": "true"}),  # the critic scores the chunk the env receives
        "lps-dit": ("lps", {"base.arch": "dit"})}  # the DiT base (src/steerflow/dit.py)
RECORDS = HERE / "results" / "practitioner_loop_cpu.json"
DIAGNOSIS = HERE / "results" / "practitioner_diagnosis_cpu.jsonl"  # benchmarks/diagnose_lps.py --out
BUDGETS = (20_000, 50_000, 100_000)  # the offline budgets the page shows, where a row's curve has them
FETCH_ENV = {"factory": "steerflow.envs.fetch:pick_and_place", "kwargs": {}, "max_episode_steps": None, "success": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", default="cube-single-task2", help="fetch-pick-and-place or cube-single-taskN")
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--artifacts", default="none", help="teleoperation artifacts: all, none or a list (pause,jitter,...)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps too (0: at the end only)")
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--online-steps", type=int, default=0, help="then fine-tune online for N env steps per seed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default="bc-mf,lps", help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--out", type=Path, default=Path("runs/practitioner"))
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--note", default="", help="e.g. the machine's load while it ran")
    ap.add_argument("--report", type=Path, default=None, help="write the results page here from the records and stop")
    args = ap.parse_args()
    if args.report:
        args.report.write_text(report(json.loads((args.results or RECORDS).read_text()), read_diagnosis()))
        print(f"wrote {args.report}")
        return
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows {','.join(unknown)}: unknown; expected some of {', '.join(ROWS)}")
    from steerflow.demos import Artifacts, check_source

    try:
        check_source(args.testbed)
        artifacts = Artifacts.parse(args.artifacts)
    except ValueError as err:
        ap.error(str(err))

    from steerflow.runinfo import device_description, git_commit

    args.commit = git_commit()  # the code this process runs: HEAD may move while it trains
    seeds = [int(s) for s in args.seeds.split(",")]
    prefix = f"{args.testbed}/{args.demos}/{args.artifacts}"
    kind = "gpu" if any(w in device_description().lower() for w in ("gpu", "cuda")) else "cpu"
    path = args.results or RECORDS.with_name(f"practitioner_loop_{kind}.json")
    name, demo_info = cached_demos(path, prefix) or import_demos(args.testbed, args.demos, artifacts)
    for row in rows:
        key = f"{prefix}/{row}@{args.steps}"
        offline_dir = args.out / key.replace("/", "_")
        runs = [(key, offline_dir, None)]
        if args.online_steps:
            runs.append((f"{key}+on{args.online_steps}", Path(f"{offline_dir}-on{args.online_steps}"), offline_dir))
        for key, run_dir, from_dir in runs:
            stored = read_records(path)["results"].get(key)
            if stored is not None and (run_dir / "final.json").exists():
                print(f"{key}: finished and recorded; its record is kept", flush=True)
                continue  # re-running a finished row must not replace its provenance (wall time, commit)
            save_row(path, prefix, demo_info, key, train_row(row, args, name, seeds, run_dir, from_dir))
    print(f"rows written to {path}")


def read_records(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"benchmark": "practitioner-loop", "demos": {}, "results": {}}


def save_row(path: Path, prefix: str, demo_info: dict, key: str, result: dict) -> None:
    """Add one row to the records as soon as it is done, under a lock: two invocations (one per
    core) may finish at once."""
    from steerflow.runinfo import atomic_write_json

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = read_records(path)
        record["demos"][prefix] = demo_info
        record["results"][key] = result
        atomic_write_json(path, record)


def cached_demos(path: Path, prefix: str) -> tuple[str, dict] | None:
    """The demos an earlier invocation imported for `prefix`, when the cache still holds them intact:
    rows continued with `--from` must train on the very arrays their offline run did, and making the
    demos again can differ in the last bit of a few observations (the simulator's floating point)."""
    from steerflow.data.cache import check_dir, data_root

    info = read_records(path)["demos"].get(prefix) if path.exists() else None
    if info is None or check_dir(data_root() / info["dataset"]) is not None:
        return None
    print(f"demos: {info['dataset']} from the cache (imported by an earlier invocation)", flush=True)
    return info["dataset"], info


def import_demos(testbed: str, num: int, artifacts) -> tuple[str, dict]:
    """Make the demos, write them to robomimic HDF5 and import that file like a user's; returns the
    dataset name and what the demos were (lengths, artifact counts, discarded attempts, seconds)."""
    from tqdm import tqdm

    from steerflow.data.imports import import_path
    from steerflow.demos import import_keys, make_demos, write_demos

    name = f"practitioner-{testbed}-{num}-{'-'.join(artifacts.active()) or 'clean'}"
    start = time.perf_counter()
    with tqdm(total=num, desc=f"{testbed} demos", unit="demo") as bar:
        demos, stats = make_demos(testbed, num, seed=0, artifacts=artifacts, progress=bar.update)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = write_demos(Path(tmp) / "demos.hdf5", testbed, demos, artifacts, seed=0)
        import_path("robomimic", path, name, obs_keys=import_keys(testbed), replace=True)
    lengths = [len(d["actions"]) for d in demos]
    return name, {"dataset": name, "lengths_mean": float(np.mean(lengths)), "lengths_min": int(min(lengths)),
                  "lengths_max": int(max(lengths)), "transitions": int(sum(lengths)), "generation_s": round(seconds, 1),
                  "stats": json.loads(json.dumps(stats, default=float))}


def _commit(at_start: str, now: str) -> str:
    """The commit a record names: the code the process started with, and HEAD at writing if it moved."""
    return at_start if now == at_start else f"{at_start} (the code that ran; HEAD when it wrote the record was {now[:7]})"


def train_row(row: str, args, dataset: str, seeds: list[int], run_dir: Path, from_dir: Path | None = None) -> dict:
    """Train (or, with `from_dir`, fine-tune online) one row; returns its result record."""
    from steerflow.report import bootstrap_ci
    from steerflow.runinfo import device_description, git_commit
    from steerflow.train import RunSpec, train
    from steerflow.train.checkpoint import checkpoint_path, read_step

    agent, overrides = ROWS[row]
    env = FETCH_ENV if args.testbed == "fetch-pick-and-place" else None
    task = f"env:{FETCH_ENV['factory']}" if env else args.testbed
    every = args.eval_every or args.steps
    train_overrides = {"steps": str(args.steps), "eval_every": str(every), "eval_episodes": str(args.eval_episodes),
                       "checkpoint_every": str(every)}
    if from_dir is not None:
        train_overrides.update(online_steps=str(args.online_steps), online_ratio="0.5", updates_per_env_step="1",
                               eval_every=str(max(args.online_steps // 4 // 20 * 20, 20)))  # a multiple of a host call
    run = RunSpec(agent=agent, task=task, seeds=seeds, preset="cpu", dataset=dataset, reward="sparse-success",
                  overrides=overrides, train_overrides=train_overrides, env=env,
                  from_run=None if from_dir is None else str(from_dir))
    resumed_from = read_step(run_dir) if checkpoint_path(run_dir).is_file() else None  # wall_s: this process only
    start = time.perf_counter()
    final = train(run, run_dir, resume=True)
    success = np.asarray(final["final_success"], float)
    evals = {int(f.stem.split("_")[1]): json.loads(f.read_text()) for f in sorted((run_dir / "evals").glob("step_*.json"))}
    curve = {step: e["success"] for step, e in evals.items()}
    held_out = {step: e["val_action_mse"] for step, e in evals.items() if "val_action_mse" in e}
    metrics = metrics_at(run_dir / "metrics.csv", curve)
    print(f"{row:16s} {'online' if from_dir else 'offline'} success {success.mean():.3f} 95% CI "
          f"{list(bootstrap_ci(success))} per seed {np.round(success, 3).tolist()}", flush=True)
    return {"agent": agent, "overrides": overrides, "steps": args.steps, "online_steps": args.online_steps if from_dir else 0,
            "seeds": seeds, "eval_episodes": args.eval_episodes, "success": success.tolist(),
            "mean": float(success.mean()), "ci95": list(bootstrap_ci(success)), "curve": curve, "metrics": metrics,
            **({"held_out_mse": held_out} if held_out else {}),
            "online_successes": final.get("online_successes"), "online_episodes": final.get("online_episodes"),
            **({"resumed_from_step": resumed_from} if resumed_from is not None else {}),
            "wall_s": round(time.perf_counter() - start, 1), "device": device_description(), "machine": platform.node(),
            "cpu_affinity": sorted(os.sched_getaffinity(0)), "commit": _commit(args.commit, git_commit()), "note": args.note,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def wall(row: dict) -> str:
    """The provenance table's wall seconds: a resumed row's are its last process's only."""
    step = row.get("resumed_from_step")
    return f"{row['wall_s']:.0f}" + ("" if step is None else f" (resumed from step {step}: that process only)")


def metrics_at(path: Path, steps) -> dict:
    """{step: {metric: mean over seeds}} of `metrics.csv` at the given steps (the evaluation steps)."""
    import csv

    if not path.exists():
        return {}
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) in set(map(int, steps))]
    out: dict = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "seed", "steps_per_s") and v:
                out.setdefault(int(r["step"]), {}).setdefault(k, []).append(float(v))
    return {step: {k: round(float(np.mean(v)), 4) for k, v in m.items()} for step, m in sorted(out.items())}


def read_diagnosis(path: Path = DIAGNOSIS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


DIAGNOSIS_COLUMNS = (("step", "step", "{:.0f}"), ("steered_success", "steered %", "{:.0%}"),
                     ("base_success", "base, random latents %", "{:.0%}"), ("critic_bias", "critic bias", "{:+.2f}"),
                     ("critic_corr", "critic corr.", "{:.3f}"), ("q_demo", "Q demo", "{:.2f}"),
                     ("q_base", "Q base", "{:.2f}"), ("q_steered", "Q steered", "{:.2f}"),
                     ("q_std_demo", "σ_Q demo", "{:.3f}"), ("q_std_steered", "σ_Q steered", "{:.3f}"),
                     ("steered_to_nearest_base_rms", "steered→nearest base", "{:.3f}"),
                     ("latent_cosine_mean", "latent cos.", "{:.2f}"))


def diagnosis_table(rows: list[dict]) -> list[str]:
    """`benchmarks/diagnose_lps.py` rows, one line per (run step, seed)."""
    head = "| run | seed | " + " | ".join(title for _, title, _ in DIAGNOSIS_COLUMNS) + " |"
    lines = [head, "|---" * (len(DIAGNOSIS_COLUMNS) + 2) + "|"]
    for r in sorted(rows, key=lambda r: (Path(r["run"]).name, r["step"], r["seed"])):
        lines.append(f"| {Path(r['run']).name} | {r['seed']} | "
                     + " | ".join(fmt.format(r[k]) if k in r else "–" for k, _, fmt in DIAGNOSIS_COLUMNS) + " |")
    return lines


def trace(curve: dict, online: dict | None) -> str:
    """`10→29 20→65 ...`: every evaluation's mean success %, offline then (after `|`) online."""
    def part(c):
        return " ".join(f"{step / 1000:g}→{100 * np.mean(v):.0f}" for step, v in sorted((int(k), v) for k, v in c.items()))

    extra = {k: v for k, v in (online or {}).get("curve", {}).items() if int(k) > max(map(int, curve))}
    return part(curve) + (f" \\| {part(extra)}" if extra else "")


def difference_ci(a, b, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of mean(a) − mean(b), seeds of each resampled independently (separate runs)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    draws = (a[rng.integers(0, len(a), (resamples, len(a)))].mean(1)
             - b[rng.integers(0, len(b), (resamples, len(b)))].mean(1))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def difference_text(a, b) -> str:
    """mean(a) − mean(b) in points with its 95% CI, e.g. "+3 [-10, +15]"."""
    lo, hi = difference_ci(a, b)
    return f"{100 * (np.mean(a) - np.mean(b)):+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}]"


def at_budget(rows: dict, method: str, budget: int | None):
    """Per-seed success of `method` (a row name before `@`) at an offline `budget` — from the longest
    run whose curve has it — or, with `budget=None`, after its online phase; None if not measured."""
    if budget is None:
        online = [r for n, r in rows.items() if n.split("@")[0] == method and "+on" in n]
        return max(online, key=lambda r: r.get("steps", 0))["success"] if online else None
    runs = [r for n, r in rows.items() if n.split("@")[0] == method and "+on" not in n and str(budget) in r["curve"]]
    return max(runs, key=lambda r: r.get("steps", 0))["curve"][str(budget)] if runs else None


def comparisons(groups: dict, lps: str = "lps", bc: str = "bc-mf"):
    """(test bed, budget or None for online, LPS per seed, BC-MF per seed) wherever both were measured."""
    for prefix, rows in groups.items():
        for budget in (*BUDGETS, None):
            a, b = at_budget(rows, lps, budget), at_budget(rows, bc, budget)
            if a is not None and b is not None:
                yield prefix, budget, a, b


def glance(groups: dict) -> list[str]:
    """LPS against BC-MF on every test bed and budget: both means and the difference's 95% CI in points."""
    cells: dict = {}
    for prefix, budget, a, b in comparisons(groups):
        cells[prefix, budget] = f"{100 * np.mean(a):.0f} vs {100 * np.mean(b):.0f}: {difference_text(a, b)}"
    return ["## LPS against BC-MF at a glance", "",
            "Success % of LPS and BC-MF (the MeanFlow base LPS steers, trained alone), and LPS − BC-MF in",
            "points with its 95% CI (seeds resampled within each method).", "",
            "| test bed | " + " | ".join(f"{b // 1000}K" for b in BUDGETS) + " | online |", "|---" * (len(BUDGETS) + 2) + "|",
            *(f"| {prefix.replace('/', ' · ')} | " + " | ".join(cells.get((prefix, b), "–") for b in (*BUDGETS, None)) + " |"
              for prefix in groups), ""]


def budget_and_online(rows: dict, method: str, budget: int = 50_000):
    """(per-seed success at the offline `budget`, per-seed success after the online fine-tuning that
    continued it), each None where not measured: the run trained to exactly that budget where there
    is one (the one online continues), else the longest whose curve has it."""
    own = rows.get(f"{method}@{budget}")
    offline = own["curve"][str(budget)] if own else at_budget(rows, method, budget)
    online = next((r["success"] for n, r in rows.items() if n.startswith(f"{method}@{budget}+on")), None)
    return offline, online


def best_methods(groups: dict, budget: int = 50_000) -> dict:
    """{test bed: ((method, mean) highest at the offline `budget`, (method, mean) highest after online
    fine-tuning or None)}, by mean success over seeds (ties: the first in `ROWS` order)."""
    best = {}
    for prefix, rows in groups.items():
        pairs = {m: budget_and_online(rows, m, budget) for m in ROWS}
        top = [max(((m, float(np.mean(p[i]))) for m, p in pairs.items() if p[i] is not None),
                   key=lambda t: t[1], default=None) for i in (0, 1)]
        best[prefix] = tuple(top)
    return best


def methods_table(groups: dict, budget: int = 50_000) -> list[str]:
    """Every method on every test bed: mean success % at the offline `budget`, then (`→`) after the
    online fine-tuning that continued it (`budget_and_online`); rows in `ROWS` order."""
    def cell(rows, method):
        offline, online = budget_and_online(rows, method, budget)
        text = "–" if offline is None else f"{100 * np.mean(offline):.0f}"
        return text + ("" if online is None else f" → {100 * np.mean(online):.0f}")

    lines = [f"## Every method at {budget // 1000}K steps, then online", "",
             f"Mean success % over seeds at {budget // 1000}K offline steps → after online fine-tuning from that",
             "checkpoint (– not measured; the CIs are in each test bed's table below).", "",
             "| row | " + " | ".join(p.replace("/", " · ") for p in groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for method in ROWS:
        cells = [cell(rows, method) for rows in groups.values()]
        if any(c != "–" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def variants(groups: dict, bc: str = "bc-mf") -> list[str]:
    """Each LPS variant (a row `lps-*`) against BC-MF at every step both curves have: the remedies
    tried for LPS's gap, in one table."""
    lines = ["## LPS variants against BC-MF", "",
             "LPS − BC-MF in points [95% CI] at each evaluation both runs have (variants: `lps-pessimistic` = 10",
             "critics, the actor climbs mean − 0.5·std; `lps-min` = the min of the 2 critics, in the targets",
             "and in the actor's loss; `lps-clip` = the critic scores the clipped chunk; `lps-dit` = the DiT base).", "",
             "| test bed | variant | step K (then after online fine-tuning): LPS − BC-MF |", "|---|---|---|"]
    for prefix, rows in groups.items():
        for method in sorted({n.split("@")[0] for n in rows if n.startswith("lps")}):
            cells = []
            for budget in (*offline_steps(rows, method), None):
                a, b = at_budget(rows, method, budget), at_budget(rows, bc, budget)
                if a is not None and b is not None:
                    cells.append(f"{'online' if budget is None else budget // 1000}: {difference_text(a, b)}")
            if cells:
                lines.append(f"| {prefix.replace('/', ' · ')} | {method} | " + " · ".join(cells) + " |")
    return lines + [""]


def findings(groups: dict, diagnosis: list[dict]) -> list[str]:
    """Generated sentences: where LPS stands against BC-MF, where each long run peaked, what online
    fine-tuning added, and what the diagnosis found."""
    verdicts = {"above": 0, "tied": 0, "below": 0}
    for _, _, a, b in comparisons(groups):
        lo, hi = difference_ci(a, b)
        verdicts["above" if lo > 0 else "below" if hi < 0 else "tied"] += 1
    lines = ["## Findings", "",
             f"- Of {sum(verdicts.values())} comparisons, LPS is above BC-MF in {verdicts['above']}, indistinguishable "
             f"(the CI holds 0) in {verdicts['tied']} and below in {verdicts['below']}."]
    for prefix, rows in groups.items():
        peaks = []
        for name, row in rows.items():
            curve = {int(k): np.mean(v) for k, v in row["curve"].items()}
            if "+on" in name or len(curve) < 3:
                continue
            best = max(curve, key=curve.get)
            peaks.append(f"{name} peaks at {100 * curve[best]:.0f}% ({best // 1000}K) and ends at "
                         f"{100 * curve[max(curve)]:.0f}% ({max(curve) // 1000}K)")
        online = [f"{name.split('@')[0]} {100 * np.mean(rows[name.split('+on')[0]]['success']):.0f}% → "
                  f"{100 * np.mean(row['success']):.0f}%" for name, row in rows.items()
                  if "+on" in name and name.split("+on")[0] in rows]
        if peaks or online:
            lines.append(f"- {prefix.replace('/', ' · ')}: " + "; ".join(peaks)
                         + ("; online: " + ", ".join(online) if online else "") + ".")
    lines += variant_findings(groups)
    with_env = [r for r in diagnosis if "base_success" in r]
    if with_env:
        worse = sum(r["steered_success"] < r["base_success"] for r in with_env)
        higher_q = sum(r["q_steered"] > r["q_base"] for r in with_env)
        lines.append(f"- Diagnosis: in {worse} of {len(with_env)} (run, seed) checkpoints the steered policy succeeds less "
                     f"often than its own base on random latents, while the critic values the steered chunk above "
                     f"the base's in {higher_q}.")
    return lines + [""]


def offline_steps(rows: dict, method: str) -> list[int]:
    """The offline evaluation steps of `method`'s rows on one test bed, in order."""
    return sorted({int(k) for n, r in rows.items() if n.split("@")[0] == method and "+on" not in n for k in r["curve"]})


def last_offline_step(rows: dict, method: str) -> int | None:
    """The last offline evaluation of `method`'s rows on one test bed (None: it has no row there)."""
    steps = offline_steps(rows, method)
    return steps[-1] if steps else None


def variant_findings(groups: dict, bc: str = "bc-mf") -> list[str]:
    """One sentence per LPS variant: at its last offline evaluation on each test bed, and after online
    fine-tuning where it has an online row, it and plain LPS against BC-MF (points, 95% CI)."""
    def versus(rows, method, step):
        a, b = at_budget(rows, method, step), at_budget(rows, bc, step)
        return None if a is None or b is None else difference_text(a, b)

    out = []
    for method in sorted({n.split("@")[0] for rows in groups.values() for n in rows if n.startswith("lps-")}):
        parts = []
        for prefix, rows in groups.items():
            step = last_offline_step(rows, method)
            if step is None:
                continue
            for budget in (step, None):
                mine, plain = versus(rows, method, budget), versus(rows, "lps", budget)
                if mine:
                    when = "after online fine-tuning" if budget is None else f"at {step // 1000}K"
                    parts.append(f"{prefix.replace('/', ' · ')} {when}: {mine}" + (f" (plain LPS {plain})" if plain else ""))
        if parts:
            out.append(f"- {method} − BC-MF in points: " + "; ".join(parts) + ".")
    return out


def held_out_choices(groups: dict) -> list[tuple]:
    """(test bed, row, last, chosen, best, steps chosen) per offline row that recorded its held-out
    action MSE at two or more evaluations: each seed's success (mean over seeds) at its last
    evaluation, at the evaluation of its lowest held-out MSE, and at the best one an env found."""
    out = []
    for prefix, named in groups.items():
        for name, row in named.items():
            mse = {int(k): v for k, v in row.get("held_out_mse", {}).items()}
            if "+on" in name or len(mse) < 2:
                continue
            curve = {int(k): v for k, v in row["curve"].items()}
            seeds = range(len(row["seeds"]))
            picked = [min(mse, key=lambda k: (mse[k][i], k)) for i in seeds]
            chosen = np.mean([curve[k][i] for i, k in zip(seeds, picked)])
            best = np.mean([max(curve[k][i] for k in mse) for i in seeds])
            out.append((prefix, name, np.mean(curve[max(mse)]), chosen, best, picked))
    return out


def stopping_rule(groups: dict) -> list[str]:
    """Choosing the checkpoint without an env (`held_out_choices`): the table, then how far the
    choice fell from the last evaluation for behaviour cloning and for the rows with a critic."""
    choices = held_out_choices(groups)
    if not choices:
        return []
    rows = [f"| {prefix.replace('/', ' · ')} | {name} | {100 * last:.1f} | {100 * chosen:.1f} "
            f"({', '.join(f'{k // 1000}K' for k in picked)}) | {100 * best:.1f} |"
            for prefix, name, last, chosen, best, picked in choices]
    summary = []
    for family, members in (("behaviour cloning", [c for c in choices if c[1].startswith("bc-")]),
                            ("a critic", [c for c in choices if not c[1].startswith("bc-")])):
        gaps = [round(100 * (chosen - last), 6) for _, _, last, chosen, _, _ in members]  # −10.000000000000004 is −10
        if gaps:
            summary.append(f"- Rows with {family}: the lowest held-out MSE's choice minus the last evaluation is "
                           f"{min(gaps):+.0f} to {max(gaps):+.0f} points; more than 10 points below it in "
                           f"{sum(g < -10 for g in gaps)} of {len(gaps)} rows.")
    return ["## Choosing the checkpoint without an env", "",
            "On a robot every evaluation costs rollouts; the held-out demos (a tenth of the import, never",
            "trained on) cost nothing. Each seed's success at the evaluation where its held-out action MSE",
            "was lowest (the steps it chose), against the last evaluation and the best one the env found.", "",
            "| test bed | row | last % | lowest held-out MSE % (steps) | best in the env % |", "|---|---|---|---|---|",
            *rows, "", *summary, ""]


def _qc_fql_alpha() -> float:
    from steerflow.agents import qc_fql

    return qc_fql.Config().alpha


def report(record: dict, diagnosis: list[dict] = ()) -> str:
    """The results page (Markdown) of a records file, in the results pages' template: question,
    protocol, command; LPS − BC-MF at a glance; every method at 50K and online; per test bed, success % mean [95% CI] at each offline
    budget a row's curve reached and after its online phase; the LPS diagnosis rows
    (`diagnose_lps.py`); generated findings; the provenance."""
    from steerflow.report import bootstrap_ci

    def cell(values) -> str:
        if values is None:
            return "–"
        lo, hi = bootstrap_ci(values)
        return f"{100 * np.mean(values):.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"

    lines = ["# The practitioner's loop: LPS against behaviour cloning on teleoperation-like demos", "",
             "**Question.** From a few tens of successful but imperfect demos without rewards — the robot",
             "practitioner's data — does LPS match or beat behaviour cloning offline, and improve online?", "",
             "## Protocol", "",
             "Scripted demos with teleoperation artifacts (`steerflow data demos`: pauses, hesitation,",
             "micro-corrections, jitter, premature release; `none` = the noisy oracle alone) are written to",
             "robomimic HDF5 and imported like a user's file; every row trains on them with",
             "`--reward sparse-success` (−1 per step, 0 and episode end at success), the CPU preset's nets",
             "(2×256, batch 128), 3 seeds vmapped in one process, evaluated every 10K steps in the env",
             "(50 episodes per seed) through the run's stored normalisation. Online rows continue the",
             "offline run (`--from`) in the same env with balanced batches (half online, half demos), one",
             "update per env step. Success % is the mean over seeds [95% bootstrap CI]. Test beds are named",
             "`TESTBED · DEMOS · ARTIFACTS`; rows `AGENT[-VARIANT]@STEPS`. Every agent runs at its defaults",
             f"(QC-FQL at α = {_qc_fql_alpha():g}, its cube-single value, not tuned on these demos).", "",
             "## Command", "", "```bash",
             "MUJOCO_GL=egl python benchmarks/practitioner.py --testbed fetch-pick-and-place --artifacts all \\",
             "    --demos 50 --rows bc-mf,lps --steps 50000 --eval-every 10000 --online-steps 20000",
             "python benchmarks/diagnose_lps.py runs/practitioner/ROW_DIR --out benchmarks/results/practitioner_diagnosis_cpu.jsonl",
             "python benchmarks/pages.py  # this page, from the records", "```", "",
             "Records: `benchmarks/results/practitioner_loop_cpu.json` and `practitioner_diagnosis_cpu.jsonl`.", ""]
    groups: dict[str, dict] = {}
    for key, row in record["results"].items():
        prefix, name = key.rsplit("/", 1)
        groups.setdefault(prefix, {})[name] = row
    lines += glance(groups) + methods_table(groups) + variants(groups) + stopping_rule(groups)
    for prefix, rows in groups.items():
        demos = record["demos"].get(prefix, {})
        lines += [f"## {prefix.replace('/', ' · ')}", "",
                  f"{demos.get('transitions', '?')} transitions, demos of {demos.get('lengths_mean', 0):.1f} steps "
                  f"on average ({demos.get('lengths_min', '?')}–{demos.get('lengths_max', '?')}).", "",
                  "| row | " + " | ".join(f"{b // 1000}K" for b in BUDGETS) + " | last evaluation | online | curve: step K → % |",
                  "|---" * (len(BUDGETS) + 4) + "|"]
        for name, row in rows.items():
            if "+on" in name:
                continue
            curve = {int(k): v for k, v in row["curve"].items()}
            online = next((r for n, r in rows.items() if n.startswith(name + "+on")), None)
            online_cell = f"{cell(online['success'])} (+{online['online_steps'] // 1000}K env steps)" if online else "–"
            last = max(curve)
            lines.append(f"| {name} | " + " | ".join(cell(curve.get(b)) for b in BUDGETS)
                         + f" | {cell(curve[last])} at {last // 1000}K | {online_cell} | {trace(curve, online)} |")
        lines.append("")
    if diagnosis:
        lines += ["## Diagnosis of LPS", "",
                  "`benchmarks/diagnose_lps.py` on the LPS rows' last checkpoints: success of the steered policy and",
                  "of the run's own base on random sphere latents (same 50 episodes); the critic on the held-out",
                  "demos against their Monte-Carlo returns; the mean Q and ensemble spread σ_Q of the demo's, the",
                  "base's and the steered chunk at those states; the steered chunk's RMS distance to the nearest of",
                  "16 base samples; the mean cosine between the actor's latents at different states.", "",
                  *diagnosis_table(diagnosis), ""]
    lines += findings(groups, diagnosis)
    lines += ["## Provenance", "", "| row | seeds | machine | commit | wall s | note |", "|---|---|---|---|---|---|"]
    for key, row in record["results"].items():
        lines.append(f"| {key} | {','.join(map(str, row['seeds']))} | {row['device']} | {row['commit'].split()[0][:10]} | "
                     f"{wall(row)} | {row.get('note', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
