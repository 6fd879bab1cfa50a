"""Update throughput of LPS and BC-MF on this machine (issue 2, item 8).

Measures, per agent and network size (paper = 4x512 at batch 256, cpu preset = 2x256 at batch 128):
  bare   the jitted training call alone (lax.scan of sample → update), with 1 seed and with
         4 vmapped seeds, in one process using all cores; steps/s per seed;
  procs  one single-threaded process per core running the same call concurrently;
  loop   the whole `steerflow train` loop (sampling, logging, checkpoint and one 50-episode
         evaluation included) on cube-single-task2, end to end wall-clock;
and the dense float32 matmul rate of the machine, with the fraction of it each bare update
achieves (FLOPs per update from XLA's cost analysis).

    .venv/bin/python benchmarks/throughput.py [--quick]   # writes benchmarks/results/throughput_<device>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"paper": {"*.hidden": (512,) * 4, "*.actor_hidden": (512,) * 4},
         "cpu": {"*.hidden": (256,) * 2, "*.actor_hidden": (256,) * 2}}  # the cpu preset's nets
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def size_overrides(agent_name: str, size: str) -> dict:
    """The SIZES entry restricted to the nets this agent has."""
    from steerflow.agents import get_agent
    from steerflow.train import _has_field

    config = get_agent(agent_name).Config()
    return {k: v for k, v in SIZES[size].items() if _has_field(config, k[2:])}


def bare(agent_name: str, size: str, seeds: int, seconds: float, count_flops: bool = True,
         per_call: int = 20, overrides: dict | None = None) -> dict:
    """steps/s per seed of the jitted train call on a synthetic cube-single-shaped dataset."""
    import jax
    import numpy as np

    from steerflow.agents import get_agent
    from steerflow.agents.common import EnvSpec
    from steerflow.config import apply_overrides
    from steerflow.data.chunks import build_chunk_dataset
    from steerflow.train import make_train_call

    agent = get_agent(agent_name)
    config = apply_overrides(agent.Config(), {**size_overrides(agent_name, size), **(overrides or {})})
    rng = np.random.default_rng(0)
    n = 100_000
    data = {"observations": rng.normal(size=(n, 28)).astype("f4"), "next_observations": rng.normal(size=(n, 28)).astype("f4"),
            "actions": rng.uniform(-1, 1, (n, 5)).astype("f4"), "rewards": -np.ones(n, "f4"),
            "masks": np.ones(n, "f4"), "terminals": (np.arange(n) % 1000 == 999).astype("f4")}
    ds = build_chunk_dataset(data, 5, 0.99)
    spec = EnvSpec(28, 5, 5)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    states = jax.vmap(lambda k: agent.init(k, spec, config))(keys)
    batch = 256 if size == "paper" else 128
    call = make_train_call(agent, batch, per_call)
    states, keys, _ = call(states, keys, ds)  # compile
    jax.block_until_ready(states)
    flops = None
    try:
        if not count_flops:
            raise RuntimeError("skipped")
        one = make_train_call(agent, batch, 1)
        cost = one.lower(states, keys, ds).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost["flops"]) / seeds
    except Exception:  # cost analysis is best-effort
        pass
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        states, keys, _ = call(states, keys, ds)
        calls += 1
    jax.block_until_ready(states)
    sps = calls * per_call / (time.perf_counter() - start)
    return {"agent": agent_name, "size": size, "batch": batch, "seeds": seeds, "steps_per_s_per_seed": sps,
            "steps_per_s_total": sps * seeds, "gflop_per_update": flops and flops / 1e9}


def matmul_rate(seconds: float = 3.0) -> float:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda x: x @ a)
    x = f(a).block_until_ready()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x = f(x)
        x = x / jnp.float32(n)  # keep values finite; negligible cost
        reps += 1
    x.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def procs(agent_name: str, size: str, seconds: float) -> dict:
    """One single-threaded process per core, all at once; per-process steps/s."""
    count = os.cpu_count() or 1
    env = dict(os.environ, XLA_FLAGS=SINGLE_THREAD)
    cmd = [sys.executable, __file__, "--worker", agent_name, size, str(seconds)]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in runs]
    per = [r["steps_per_s_per_seed"] for r in results]
    return {"agent": agent_name, "size": size, "processes": count, "steps_per_s_per_seed": sum(per) / len(per),
            "steps_per_s_total": sum(per)}


def loop(agent_name: str, size: str, steps: int) -> dict:
    """The whole training loop end to end through the CLI (one seed, all cores)."""
    import tempfile

    out = Path(tempfile.mkdtemp()) / "run"
    size_args = ["--set", *(f"{k}={','.join(map(str, v))}" for k, v in size_overrides(agent_name, size).items())]
    cmd = [sys.executable, "-m", "steerflow.cli", "train", "--agent", agent_name, "--task", "cube-single-task2",
           "--preset", "cpu" if size == "cpu" else "paper", "--steps", str(steps), "--out", str(out), *size_args,
           "--train-set", f"eval_every={steps}", f"log_every={min(1000, steps)}", f"checkpoint_every={steps}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = (out / "metrics.csv").read_text().splitlines()
    logged_sps = float(rows[-1].split(",")[2])
    return {"agent": agent_name, "size": size, "steps": steps, "wall_s": wall, "steps_per_s_end_to_end": steps / wall,
            "steps_per_s_logged": logged_sps, "includes": "process start, data load, compile, 1 eval of 50 episodes"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        agent_name, size, seconds = args.worker
        print(json.dumps(bare(agent_name, size, 1, float(seconds))))
        return
    seconds = 5.0 if args.quick else 15.0
    from steerflow.runinfo import device_description, git_commit

    peak = matmul_rate()
    print(f"dense f32 matmul (2048^3, jit, all cores): {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for size in ("paper", "cpu"):
        for agent_name in ("lps", "bc-mf"):
            for seeds in (1, 4):
                r = bare(agent_name, size, seeds, seconds)
                r["mode"] = f"bare, {seeds} seed(s) vmapped, 1 process"
                if r["gflop_per_update"]:
                    r["fraction_of_matmul_peak"] = r["gflop_per_update"] * r["steps_per_s_per_seed"] * seeds / peak
                rows.append(r)
                print(json.dumps(r), flush=True)
            r = procs(agent_name, size, seconds)
            r["mode"] = f"bare, 1 seed per single-threaded process x {r['processes']}"
            rows.append(r)
            print(json.dumps(r), flush=True)
            r = loop(agent_name, size, (500 if size == "paper" else 2000) if args.quick else (1000 if size == "paper" else 4000))
            r["mode"] = "whole training loop (CLI)"
            rows.append(r)
            print(json.dumps(r), flush=True)
    result = {"device": device_description(), "commit": git_commit(), "matmul_gflops": peak,
              "rows": rows}
    name = "throughput_cpu.json" if "cpu" in result["device"] else "throughput_gpu.json"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {HERE / 'results' / name}")


if __name__ == "__main__":
    main()
