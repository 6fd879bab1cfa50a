"""Offline → online fine-tuning of LPS, QC-FQL and BC-MF: success at the end of the
offline phase and at the end of the online phase, per seed, with 95% bootstrap CIs over seeds, a
learning curve whose x-axis marks where online starts, and the interaction loop's speed (env
steps/s, and the shares of its time spent stepping the envs, in `act` and in updates).

Each unit (agent × task × seed) is a `steerflow sweep` unit of one seed (`steerflow.sweep.Unit`),
run through the sweep's runner on `--backend` (local: `--jobs` processes, one CPU thread each,
pinned; or Ray / SLURM) into OUT/runs/<unit>, its log in OUT/logs/<unit>.log; rerunning the script
resumes unfinished units and skips finished ones, and those whose records are already in the
committed JSON (same budget), so a study continues on a new machine without re-running them.
Sampling: LPS with balanced batches (`--online-ratio 0.5`, the LPS
paper's real-robot protocol), QC-FQL and BC-MF with offline ∪ online replay (QPILOTS/Q-chunking).

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/online.py --out runs/online \\
        --tasks cube-single-task2 --seeds 0 --offline-steps 2000 --online-steps 2000 --jobs 1

or, continuing the protocol study's finished 100K-step offline runs (`steerflow train --from`):

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/online.py --out runs/online_from_protocol \\
        --from-root runs/protocol_cpu/runs --online-steps 25000 --eval-every 12500 --jobs 1

Writes benchmarks/results/online_<cpu|gpu>.json (machines, budget, load notes, per-unit records, each with its machine and commit)
and online_<cpu|gpu>.png (curves); `--name online_puzzle` writes online_puzzle_<cpu|gpu>.* instead. The budget is the command's; say which when quoting it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATIO = {"lps": "0.5", "qc-fql": "-1", "bc-mf": "-1"}  # < 0: offline ∪ online


def study_unit(name: str, run):
    """The sweep unit of one (agent, task, seed): `run` (a `RunSpec`, maybe continuing a finished
    offline run with `--from`) with its resolved offline and online budgets."""
    from steerflow.sweep import Unit
    from steerflow.train import from_spec, resolve

    _, _, tc = resolve(from_spec(run) if run.from_run else run)
    return Unit(id=name, agent=run.agent, task=run.task, seeds=list(run.seeds), preset=run.preset,
                train_overrides=dict(run.train_overrides), steps=tc.steps, online_steps=tc.online_steps,
                from_run=run.from_run or "")


def main(argv=None) -> None:
    from steerflow.backends import UnitResources
    from steerflow.report import bootstrap_ci, plot_curves
    from steerflow.runinfo import atomic_write_json, device_description, git_commit
    from steerflow.sweep import merge_manifest, run_backend, unit_status
    from steerflow.train import RunSpec, single_thread_env

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("runs/online"))
    p.add_argument("--agents", default="lps,qc-fql,bc-mf")
    p.add_argument("--tasks", default="cube-single-task2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--offline-steps", type=int, default=100_000)
    p.add_argument("--from-root", type=Path, default=None,
                   help="continue finished offline runs (`steerflow train --from`) found here as "
                        "PREFIX<agent>-<task>-s<seed> (e.g. the protocol study's runs/protocol_cpu/runs) "
                        "instead of training the offline phase; --offline-steps is then theirs")
    p.add_argument("--from-prefix", default="steerflow-")
    p.add_argument("--online-steps", type=int, default=100_000)
    p.add_argument("--eval-every", type=int, default=None, help="gradient steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2, help="local backend: units at a time")
    p.add_argument("--backend", choices=("local", "ray", "slurm"), default="local",
                   help="where the units run (steerflow sweep's backends)")
    p.add_argument("--address", default="", help="ray: the cluster's address (default: a local Ray)")
    p.add_argument("--slurm-cluster", default="slurm", help="slurm: submitit's cluster (`local`: no SLURM)")
    p.add_argument("--eval-workers", type=int, default=None,
                   help="env worker processes per unit (0: in the training process; each worker holds ~1 GB)")
    p.add_argument("--collect-only", action="store_true", help="run nothing; write the records of finished units")
    p.add_argument("--note", default="", help="the machine's load while it ran (recorded)")
    p.add_argument("--name", default="online",
                   help="records go to benchmarks/results/NAME_<cpu|gpu>.json and .png (one name per study)")
    args = p.parse_args(argv)

    units = []
    for agent in args.agents.split(","):
        for task in args.tasks.split(","):
            for seed in map(int, args.seeds.split(",")):
                train = {"online_steps": str(args.online_steps), "online_ratio": RATIO.get(agent, "-1")}
                source = None
                if args.from_root:
                    source = args.from_root / f"{args.from_prefix}{agent}-{task}-s{seed}"
                    if not (source / "final.json").exists():
                        sys.exit(f"--from-root: {source} is not a finished offline run")
                else:
                    train["steps"] = str(args.offline_steps)
                if args.eval_every:
                    train["eval_every"] = str(args.eval_every)
                if args.eval_episodes:
                    train["eval_episodes"] = str(args.eval_episodes)
                if args.eval_workers is not None:
                    train["eval_workers"] = str(args.eval_workers)
                run = RunSpec(agent=agent, task=task, seeds=[seed], preset=args.preset, train_overrides=train,
                              from_run=None if source is None else str(source))
                units.append(study_unit(f"{agent}-{task}-s{seed}", run))
    device = device_description()
    kind = "gpu" if "gpu" in device.lower() or "cuda" in device.lower() else "cpu"
    results = HERE / "results"
    record = results / f"{args.name}_{kind}"
    # units finished in an earlier session (maybe on another machine) whose run directories are
    # gone: their committed records stand, and they are not trained again
    committed, prior_notes = {}, []
    if record.with_suffix(".json").exists():
        prior = json.loads(record.with_suffix(".json").read_text())
        if (prior["budget"]["online_env_steps"] == args.online_steps and prior["budget"]["preset"] == args.preset
                and (args.from_root is not None or prior["budget"]["offline_steps"] == args.offline_steps)):
            # records written before units named their own machine and commit: the machine is the
            # prior record's; the commit that trained them is not known, only the one that wrote it
            committed = {r["unit"]: {"device": prior["device"], "recorded_by_commit": prior["commit"], **r}
                         for r in prior["units"]}
            prior_notes = prior.get("notes") or ([prior["note"]] if prior.get("note") else [])
        else:
            print(f"{record.with_suffix('.json')} holds another budget: it is replaced, not continued")
    todo = [u for u in units if u.id not in committed and not args.collect_only]
    start = time.perf_counter()
    env = {"MUJOCO_GL": "egl", **single_thread_env()} if args.backend == "local" else {}
    os.environ.update(env)  # one XLA thread per unit (the cluster backends set it from the unit's CPUs)
    if todo:
        merge_manifest(args.out, todo)
        failed = run_backend(args.backend, args.out, todo, UnitResources(), jobs=args.jobs, address=args.address,
                             slurm_cluster=args.slurm_cluster)
        if failed:
            sys.exit(f"units failed: {sorted(failed)}; see their logs in {args.out / 'logs'}")

    records, curves, unfinished = [], {}, []
    for unit in units:
        name, run, out = unit.id, unit.spec(), args.out / unit.run_dir
        if unit_status(args.out, unit) != "done":
            if name in committed:
                records.append(committed[name])
            else:
                unfinished.append(name)
            continue
        final = json.loads((out / "final.json").read_text())
        evals = sorted((json.loads(f.read_text()) for f in (out / "evals").glob("step_*.json")),
                       key=lambda r: r["step"])
        offline_end = next(r for r in evals if r["step"] == final["offline_steps"])
        timing = final["online_timing_this_process"]
        info = json.loads((out / "run_info.json").read_text())
        busy = timing["env_s"] + timing["act_s"] + timing["update_s"]
        records.append({
            "unit": name, "agent": run.agent, "task": run.task, "seed": run.seeds[0],
            # a study may span machines: each unit names its own
            "device": info["device"], "commit": info["commit"], "dataset_fingerprint": info["dataset"]["fingerprint"],
            "offline_steps": final["offline_steps"], "offline_success": offline_end["success"][0], "online_success": final["final_success"][0],
            # minus the sub-goals left at the episodes' ends (evaluations recorded since it existed)
            "offline_final_reward": (offline_end.get("final_reward") or [None])[0],
            "online_final_reward": (evals[-1].get("final_reward") or [None])[0],
            "curve": [{"step": r["step"], "env_steps": (r.get("env_steps") or [0])[0], "success": r["success"][0],
                       "final_reward": (r.get("final_reward") or [None])[0]} for r in evals],
            "online_env_steps": final["online_env_steps"][0], "online_episodes": final["online_episodes"],
            "online_episode_success": final["online_successes"] / max(final["online_episodes"], 1),
            # the interaction loop's speed; from the process that ran the online phase (a resumed
            # unit counts only what ran after its resume)
            "env_steps_per_s": final["online_env_steps"][0] / busy if busy else None,
            "time_share": {k[:-2]: round(timing[k] / busy, 3) for k in ("env_s", "act_s", "update_s")} if busy else None,
            "timing_s": timing})

    names = {u.id for u in units}
    records += [r for unit, r in committed.items() if unit not in names]  # other agents/seeds of this study
    for r in records:
        curves.setdefault(f"{r['agent']} {r['task']}", {})[r["seed"]] = {p["step"]: p["success"] for p in r["curve"]}
    summary = []
    for key in sorted({(r["agent"], r["task"]) for r in records}):
        rows = [r for r in records if (r["agent"], r["task"]) == key]
        entry = {"agent": key[0], "task": key[1], "seeds": [r["seed"] for r in rows]}
        for phase in ("offline", "online"):
            values = [r[f"{phase}_success"] for r in rows]
            entry[f"{phase}_mean"] = float(np.mean(values))
            entry[f"{phase}_ci95"] = bootstrap_ci(values) if len(values) > 1 else None
        entry["env_steps_per_s"] = float(np.mean([r["env_steps_per_s"] for r in rows if r["env_steps_per_s"]]))
        summary.append(entry)
        ci = lambda c: f" [{c[0]:.2f}, {c[1]:.2f}]" if c else ""  # noqa: E731
        print(f"{key[0]:8s} {key[1]}: offline {entry['offline_mean']:.2f}{ci(entry['offline_ci95'])} -> online "
              f"{entry['online_mean']:.2f}{ci(entry['online_ci95'])}  ({len(rows)} seeds, "
              f"{entry['env_steps_per_s']:.1f} env steps/s)")

    offline_steps = records[0]["offline_steps"] if records else args.offline_steps
    atomic_write_json(record.with_suffix(".json"), {
        "command": " ".join(sys.argv), "device": device, "commit": git_commit(),
        "devices": sorted({r["device"] for r in records}),  # every machine a unit of this record ran on
        "notes": prior_notes + ([args.note] if args.note else []),
        "budget": {"preset": args.preset, "offline_steps": offline_steps, "online_env_steps": args.online_steps,
                   "offline_runs_continued": None if args.from_root is None else str(args.from_root),
                   "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
                   "sampling": {a: ("balanced " + r if float(r) >= 0 else "union") for a, r in RATIO.items()}},
        "wall_s_this_invocation": round(time.perf_counter() - start, 1), "summary": summary, "units": records,
        "unfinished_units": unfinished})
    plot_curves(curves, record.with_suffix(".png"),
                title=f"offline {offline_steps} steps, then {args.online_steps} env steps online",
                online_from=offline_steps)
    print(f"wrote {record.with_suffix('.json')}; online starts at step {offline_steps} on the x-axis")


if __name__ == "__main__":
    main()
