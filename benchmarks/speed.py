"""Speed of every agent on this machine, measured side by side in one run: one harness, three
studies, each writing one record that a results page reads.

  agents    training steps/s of the jitted train call (lax.scan of sample → update), 1 seed, on a
            synthetic cube-single-shaped dataset (obs 28, chunk 5x5), after compilation, at paper
            size (4x512, batch 256) and the cpu preset's (2x256, batch 128); and the latency of one
            jitted `act` call at batch 1, p50/p99 (→ agents_speed_<cpu|gpu>.json, docs/results/throughput.md)
  qpilots   QPILOTS-U/M beside QC-FQL, QC-BoN and BC-FM, all on the QPILOTS critic (J = 10,
            mean − 0.5·std, SiLU) and velocity net, at the cpu preset's size: train steps/s and
            act latency at batch 1 and 50; for QPILOTS-M also with the posterior samples one call
            each (→ qpilots_speed_<cpu|gpu>.json, docs/results/qpilots.md)
  policy    deployed-policy latency of `policy.act` (numpy in, numpy out, normalisers included) in
            four forms — the in-process JAX policy, the StableHLO artifact, ONNX Runtime with 1
            and 2 intra-op threads — at batch 1 and 16, and the chunked stepper's control rate
            (→ policy_latency_cpu.json, docs/results/throughput.md)

    .venv/bin/python benchmarks/speed.py agents [--agents lps,qc-fql] [--seconds 8] [--calls 200]
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 1 .venv/bin/python benchmarks/speed.py qpilots --variants
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 1 .venv/bin/python benchmarks/speed.py policy [--calls 1000]

Parameters are freshly initialised: speed does not depend on their values. Run on an otherwise
idle machine (each record keeps the machine, its load average and the CPUs used).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = {"paper": ({"*.hidden": (512,) * 4, "*.actor_hidden": (512,) * 4}, 256),
         "cpu": ({"*.hidden": (256, 256), "*.actor_hidden": (256, 256)}, 128)}
SPEC_DIMS = (28, 5, 5)  # cube-single: obs 28, action 5, chunk H = 5
# updates per host call as the trainer scans them, fewer for the costly ones (a short measurement)
PER_CALL = {"qc-bon": 1, "qpilots-m": 1, "qpilots-u": 5}
QPILOTS_AGENTS = ("qpilots-u", "qpilots-m", "qc-fql", "qc-bon", "bc-fm")
# the QPILOTS critic and velocity net for the baselines too (the QPILOTS agents' defaults)
QPILOTS_SHARED = {"qc-fql": {"critic": "qpilots", "flow": "qpilots"},
                  "qc-bon": {"critic": "qpilots", "flow": "qpilots"}, "bc-fm": {"flow": "qpilots"}}
POLICY_AGENTS = ("lps", "bc-mf", "bc-fm", "qc-fql", "dsrl-na")


# --------------------------------------------------------------------------- shared pieces

def agent_config(name: str, size: str, overrides: dict | None = None):
    """(agent module, config at `size`, restricted to the nets the agent has, then `overrides`)."""
    from steerflow.agents import get_agent
    from steerflow.config import apply_overrides
    from steerflow.train import has_field

    agent = get_agent(name)
    sized = {k: v for k, v in SIZES[size][0].items() if has_field(agent.Config(), k[2:])}
    return agent, apply_overrides(agent.Config(), {**sized, **(overrides or {})})


def synthetic_dataset(n: int = 100_000):
    """A cube-single-shaped chunk dataset of random transitions (episodes of 1000 steps)."""
    from steerflow.data.chunks import build_chunk_dataset

    rng, (obs, act, horizon) = np.random.default_rng(0), SPEC_DIMS
    data = {"observations": rng.normal(size=(n, obs)).astype("f4"),
            "next_observations": rng.normal(size=(n, obs)).astype("f4"),
            "actions": rng.uniform(-1, 1, (n, act)).astype("f4"), "rewards": -np.ones(n, "f4"),
            "masks": np.ones(n, "f4"), "terminals": (np.arange(n) % 1000 == 999).astype("f4")}
    return build_chunk_dataset(data, horizon, 0.99)


def train_rate(name: str, size: str, seconds: float, overrides: dict | None = None, ds=None) -> float:
    """Steps/s of one seed's jitted train call after compilation, over at least `seconds`."""
    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.train import make_train_call

    agent, config = agent_config(name, size, overrides)
    per_call = PER_CALL.get(name, 20)
    ds = ds if ds is not None else synthetic_dataset()
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    states = jax.vmap(lambda k: agent.init(k, EnvSpec(*SPEC_DIMS), config))(keys)
    call = make_train_call(agent, SIZES[size][1], per_call)
    states, keys, _ = call(states, keys, ds)  # compile
    jax.block_until_ready(states)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        states, keys, _ = call(states, keys, ds)
        calls += 1
    jax.block_until_ready(states)
    return calls * per_call / (time.perf_counter() - start)


def act_latency(name: str, size: str, calls: int, batch: int = 1, overrides: dict | None = None) -> dict:
    """p50/p99 ms of one jitted `act` call at `batch`, result fetched to the host each call."""
    import jax

    from steerflow.agents.common import EnvSpec

    agent, config = agent_config(name, size, overrides)
    state = agent.init(jax.random.PRNGKey(0), EnvSpec(*SPEC_DIMS), config)
    policy = jax.jit(agent.act)
    obs = np.random.default_rng(0).normal(size=(batch, SPEC_DIMS[0])).astype("f4")
    key = jax.random.PRNGKey(1)
    for _ in range(5):  # compile and warm up
        np.asarray(policy(state, obs, key))
    times = []
    for i in range(calls):
        start = time.perf_counter()
        np.asarray(policy(state, obs, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - start)
    ms = 1e3 * np.array(times)
    return {"act_p50_ms": float(np.percentile(ms, 50)), "act_p99_ms": float(np.percentile(ms, 99))}


def default_out(stem: str) -> Path:
    from steerflow.runinfo import device_description

    return HERE / "results" / f"{stem}_{'cpu' if 'cpu' in device_description().lower() else 'gpu'}.json"


def write(path: Path, record: dict) -> None:
    from steerflow.runinfo import atomic_write_json, device_description, git_commit

    atomic_write_json(path, {"device": device_description(), "commit": git_commit(),
                             "cpus_used": sorted(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg(),
                             **record})
    print(f"wrote {path}", flush=True)


# --------------------------------------------------------------------------- the three studies

def agents_study(args) -> None:
    from steerflow.runinfo import git_commit

    path = args.out or default_out("agents_speed")
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    ds = synthetic_dataset(args.transitions)
    for name in args.agents.split(","):
        row = {"agent": name, **{f"train_steps_per_s_{size}": train_rate(name, size, args.seconds, ds=ds)
                                 for size in args.sizes.split(",")},
               **act_latency(name, "paper", args.calls), "commit": git_commit()}
        print(json.dumps(row), flush=True)
        old = [r for r in old if r["agent"] != name] + [row]  # other agents' rows kept; written agent by agent
        write(path, {"protocol": "train: 1 seed, all cores, synthetic data, after compile; act: batch 1, paper size",
                     "rows": old})


def qpilots_study(args) -> None:
    jobs = [(name, QPILOTS_SHARED.get(name, {})) for name in args.agents.split(",")]
    if args.variants:
        jobs += [(name, {"steered_targets": "false"}) for name in ("qpilots-u", "qpilots-m")]
    ds, rows = synthetic_dataset(args.transitions), []
    for name, extra in jobs:
        row = {"agent": name, "overrides": extra, "updates_per_call": PER_CALL.get(name, 20),
               "train_steps_per_s": train_rate(name, "cpu", args.seconds, extra, ds)}
        for batch in (1, 50):
            lat = act_latency(name, "cpu", args.calls, batch, extra)
            row[f"act_b{batch}_p50_ms"], row[f"act_b{batch}_p99_ms"] = lat["act_p50_ms"], lat["act_p99_ms"]
            if name == "qpilots-m" and not extra:
                one_each = act_latency(name, "cpu", args.calls, batch, {"batch_posterior": "false"})
                row[f"act_b{batch}_p50_ms_posterior_one_call_each"] = one_each["act_p50_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(args.out or default_out("qpilots_speed"),
          {"protocol": "cpu-preset size (2x256, batch 128), QPILOTS critic and flow net for all, 1 seed, "
                       "one thread, after compile; act at batch 1 and 50", "rows": rows})


def deployed_forms(name: str, workdir: Path) -> dict:
    """{form: Policy} of one agent at the cpu preset's sizes, identity normalisation."""
    import jax

    from steerflow import export, policy
    from steerflow.agents.common import EnvSpec
    from steerflow.data.normalization import Normalization

    agent, config = agent_config(name, "cpu")
    spec = EnvSpec(*SPEC_DIMS)
    state = agent.init(jax.random.PRNGKey(0), spec, config)
    norm = Normalization.identity(spec.obs_dim, spec.action_dim)
    meta = {"agent": name, "task": "cube-single-task2", "obs_dim": spec.obs_dim, "action_dim": spec.action_dim,
            "horizon": spec.horizon, "noise": policy.noise_spec(agent, config, spec), "normalization": norm.to_json()}
    function = policy.acting_function(agent, state, norm)
    hlo = export.export_policy(function, meta, "stablehlo", workdir / f"{name}-stablehlo")
    onnx = export.export_policy(function, meta, "onnx", workdir / f"{name}-onnx")
    return {"jax": policy.JaxPolicy(agent, state, norm, meta), "stablehlo": policy.load(hlo),
            "onnx-1t": policy.load(onnx, threads=1), "onnx-2t": policy.load(onnx, threads=2)}


def form_latencies(forms: dict, batch: int, calls: int, warmup: int, rounds: int = 20) -> dict:
    """{form: p50/p99 ms} of `act` at `batch`; the forms take turns in `rounds` rounds, so that
    the load of a shared core falls on all of them alike."""
    obs = np.random.default_rng(0).normal(size=(batch, SPEC_DIMS[0])).astype(np.float32)
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
    return {form: {"p50_ms": round(float(np.percentile(1e3 * np.asarray(t), 50)), 4),
                   "p99_ms": round(float(np.percentile(1e3 * np.asarray(t), 99)), 4), "calls": len(t)}
            for form, t in times.items()}


def control_rate(p, steps: int) -> float:
    """Steps/s of the chunked stepper (one query every H steps) at batch 1."""
    stepper = p.stepper()
    obs = np.random.default_rng(1).normal(size=p.obs_dim).astype(np.float32)
    for _ in range(2 * p.horizon):
        stepper.step(obs)
    start = time.perf_counter()
    for _ in range(steps):
        stepper.step(obs)
    return round(steps / (time.perf_counter() - start), 1)


def policy_study(args) -> None:
    import onnxruntime

    from steerflow.runinfo import library_versions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.agents.split(","):
            forms = deployed_forms(name, Path(tmp))
            batch1, batch16 = (form_latencies(forms, b, args.calls, args.warmup) for b in (1, 16))
            for form, p in forms.items():
                row = {"agent": name, "form": form, "deterministic": p.deterministic, "batch1": batch1[form],
                       "batch16": batch16[form], "stepper_steps_per_s": control_rate(p, 5 * args.calls)}
                rows.append(row)
                print(f"{name:8s} {form:10s} batch1 p50 {row['batch1']['p50_ms']:.3f} ms | batch16 p50 "
                      f"{row['batch16']['p50_ms']:.3f} ms | stepper {row['stepper_steps_per_s']:.0f} steps/s", flush=True)
    write(args.out or HERE / "results" / "policy_latency_cpu.json",
          {"versions": {**library_versions(), "onnxruntime": onnxruntime.__version__},
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "calls": args.calls, "warmup": args.warmup,
           "sizes": "cpu preset: 2x256 nets; obs 28, chunk H=5 x A=5; BC-FM 10 Euler steps", "note": args.note,
           "rows": rows})


def main(argv=None) -> int:
    from steerflow.agents import AGENTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="study", required=True)
    a = sub.add_parser("agents", help="train steps/s and act latency of every agent")
    a.add_argument("--agents", default=",".join(AGENTS))
    a.add_argument("--sizes", default="paper,cpu")
    a.add_argument("--seconds", type=float, default=8.0)
    a.add_argument("--calls", type=int, default=200)
    q = sub.add_parser("qpilots", help="QPILOTS beside its baselines on the QPILOTS networks")
    q.add_argument("--agents", default=",".join(QPILOTS_AGENTS))
    q.add_argument("--variants", action="store_true", help="also QPILOTS with steered_targets=false")
    q.add_argument("--seconds", type=float, default=20.0)
    q.add_argument("--calls", type=int, default=30)
    p = sub.add_parser("policy", help="deployed-policy latency in every exported form")
    p.add_argument("--agents", default=",".join(POLICY_AGENTS))
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--note", default="", help="what the record should say about the machine's state")
    for s in (a, q, p):
        s.add_argument("--out", type=Path, help="the record (default: benchmarks/results/...)")
    for s in (a, q):
        s.add_argument("--transitions", type=int, default=100_000, help="size of the synthetic dataset")
    args = parser.parse_args(argv)
    {"agents": agents_study, "qpilots": qpilots_study, "policy": policy_study}[args.study](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
