"""Deployed-policy latency: `policy.act` from numpy observations to numpy
action chunks, normalisers included, for each agent at the CPU preset's network sizes (2x256,
cube-single shapes: obs 28, chunk 5x5), in four forms:

  jax        the in-process JAX policy (`steerflow.policy.JaxPolicy`: jitted, parameters baked in)
  stablehlo  the `steerflow export --format stablehlo` artifact under `jax.export`
  onnx-1t    the ONNX artifact under onnxruntime, 1 intra-op thread
  onnx-2t    the same with 2 intra-op threads

at batch 1 (one robot) and batch 16, p50/p99 over `--calls` calls after `--warmup` calls (the
forms of an agent take turns in 20 rounds, so a shared core's load bursts hit them alike); plus
the chunked stepper's control rate (steps/s of `stepper.step(obs)`, one query per 5 steps) in
each form at batch 1. Parameters are freshly initialised (latency does not depend on their values).

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 1 .venv/bin/python benchmarks/policy_latency.py [--calls 1000]

Writes benchmarks/results/policy_latency_cpu.json (machine, load average, the CPUs it ran on).
Run pinned to one core, the 2-thread case shares that core between its threads.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AGENTS = ("lps", "bc-mf", "bc-fm", "qc-fql", "dsrl-na")
FORMS = ("jax", "stablehlo", "onnx-1t", "onnx-2t")


def policies(name: str, workdir: Path) -> dict:
    """{form: Policy} of one agent at the cpu preset's sizes."""
    import jax

    from steerflow import export, policy
    from steerflow.agents.common import EnvSpec
    from steerflow.data.normalization import Normalization
    from steerflow.train import RunSpec, resolve

    agent, config, tc = resolve(RunSpec(agent=name, task="cube-single-task2", seeds=[0], preset="cpu"))
    spec = EnvSpec(obs_dim=28, action_dim=5, horizon=tc.horizon)
    state = agent.init(jax.random.PRNGKey(0), spec, config)
    norm = Normalization.identity(spec.obs_dim, spec.action_dim)
    meta = {"agent": name, "task": "cube-single-task2", "obs_dim": spec.obs_dim, "action_dim": spec.action_dim,
            "horizon": spec.horizon, "noise": policy.noise_spec(agent, config, spec), "normalization": norm.to_json()}
    function = policy.acting_function(agent, state, norm)
    forms = {"jax": policy.JaxPolicy(agent, state, norm, meta)}
    hlo = export.export_policy(function, meta, "stablehlo", workdir / f"{name}-stablehlo")
    onnx = export.export_policy(function, meta, "onnx", workdir / f"{name}-onnx")
    forms["stablehlo"] = policy.load(hlo)
    forms["onnx-1t"] = policy.load(onnx, threads=1)
    forms["onnx-2t"] = policy.load(onnx, threads=2)
    return forms


def latencies(forms: dict, batch: int, calls: int, warmup: int, rounds: int = 20) -> dict:
    """{form: p50/p99 ms} of `act` at `batch`. The forms take turns in `rounds` rounds of
    calls / rounds calls each, so that the load of a shared core falls on all of them alike."""
    obs = np.random.default_rng(0).normal(size=(batch, 28)).astype(np.float32)
    for p in forms.values():
        for _ in range(warmup):
            p.act(obs)
    times = {form: [] for form in forms}
    for _ in range(rounds):
        for form, p in forms.items():
            for _ in range(max(1, calls // rounds)):
                start = time.perf_counter()
                p.act(obs)
                times[form].append(time.perf_counter() - start)
    out = {}
    for form, t in times.items():
        ms = 1e3 * np.asarray(t)
        out[form] = {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
                     "calls": len(t)}
    return out


def control_rate(p, steps: int) -> float:
    stepper = p.stepper()
    obs = np.random.default_rng(1).normal(size=p.obs_dim).astype(np.float32)
    for _ in range(2 * p.horizon):
        stepper.step(obs)
    start = time.perf_counter()
    for _ in range(steps):
        stepper.step(obs)
    return round(steps / (time.perf_counter() - start), 1)


def main() -> None:
    from steerflow.runinfo import atomic_write_json, device_description, git_commit, library_versions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "policy_latency_cpu.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.agents.split(","):
            forms = policies(name, Path(tmp))
            batch1 = latencies(forms, 1, args.calls, args.warmup)
            batch16 = latencies(forms, 16, args.calls, args.warmup)
            for form, p in forms.items():
                row = {"agent": name, "form": form, "deterministic": p.deterministic,
                       "batch1": batch1[form], "batch16": batch16[form],
                       "stepper_steps_per_s": control_rate(p, 5 * args.calls)}
                rows.append(row)
                print(f"{name:8s} {form:10s} batch1 p50 {row['batch1']['p50_ms']:.3f} ms p99 "
                      f"{row['batch1']['p99_ms']:.3f} | batch16 p50 {row['batch16']['p50_ms']:.3f} ms p99 "
                      f"{row['batch16']['p99_ms']:.3f} | stepper {row['stepper_steps_per_s']:.0f} steps/s", flush=True)
    import onnxruntime

    atomic_write_json(args.out, {
        "device": device_description(), "cpus_used": sorted(os.sched_getaffinity(0)),
        "load_average_at_end": os.getloadavg(), "commit": git_commit(),
        "versions": {**library_versions(), "onnxruntime": onnxruntime.__version__},
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "calls": args.calls, "warmup": args.warmup,
        "sizes": "cpu preset: 2x256 nets; obs 28, chunk H=5 x A=5; BC-FM 10 Euler steps",
        "note": ("taken on a shared, loaded core (core 1, shared with other sessions' work; core 0 runs a long "
                 "study and was left alone), so the 2-thread onnxruntime case shares one core between its threads"),
        "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
