"""Training throughput and acting latency of every agent on this machine.

For each agent at paper size (4x512 nets, batch 256; SPEC §6):
  train   steps/s of the jitted training call (lax.scan of sample → update), 1 seed, all cores,
          on a synthetic cube-single-shaped dataset (obs 28, chunk 5x5), after compilation;
  act     latency of one jitted `act` call at batch 1 (a single robot), p50 and p99 over
          `--calls` calls after warm-up, result fetched to the host each call.
Also at the cpu preset's size (2x256, batch 128) for the train figure, since the CPU benchmarks
use it. Run it on an otherwise idle machine: figures are printed and written to
benchmarks/results/agents_speed_<cpu|gpu>.json.

    .venv/bin/python benchmarks/agents_speed.py [--agents lps,qc-fql] [--seconds 8] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import bare, size_overrides  # noqa: E402


def act_latency(agent_name: str, size: str, calls: int, batch: int = 1, overrides: dict | None = None) -> dict:
    import jax
    import numpy as np

    from steerflow.agents import get_agent
    from steerflow.agents.common import EnvSpec
    from steerflow.config import apply_overrides

    agent = get_agent(agent_name)
    config = apply_overrides(agent.Config(), {**size_overrides(agent_name, size), **(overrides or {})})
    state = agent.init(jax.random.PRNGKey(0), EnvSpec(28, 5, 5), config)
    policy = jax.jit(agent.act)
    obs = np.random.default_rng(0).normal(size=(batch, 28)).astype("f4")
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


def save(path: Path, device: str, row: dict) -> None:
    """Merge one agent's row into the results file (rows of other agents are kept)."""
    from steerflow.runinfo import atomic_write_json, git_commit

    result = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = [r for r in result["rows"] if r["agent"] != row["agent"]] + [{**row, "commit": git_commit()}]
    atomic_write_json(path, {"device": device, "rows": rows, "protocol":
                             "train: 1 seed, all cores, synthetic data, after compile; act: batch 1, paper size"})


def main() -> None:
    from steerflow.agents import AGENTS
    from steerflow.runinfo import device_description

    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--sizes", default="paper,cpu")
    args = parser.parse_args()
    rows = []
    device = device_description()
    path = HERE / "results" / ("agents_speed_cpu.json" if "cpu" in device.lower() else "agents_speed_gpu.json")
    for name in args.agents.split(","):
        row = {"agent": name}
        for size in args.sizes.split(","):
            # best-of-N does N·K base evaluations per state: one update per host call keeps its
            # measurement short; the others scan 20 updates per call as the trainer does
            r = bare(name, size, 1, args.seconds, count_flops=False, per_call=1 if name == "qc-bon" else 20)
            row[f"train_steps_per_s_{size}"] = r["steps_per_s_per_seed"]
        row.update(act_latency(name, "paper", args.calls))
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(path, device, row)
    rows = json.loads(path.read_text())["rows"]
    print(f"\n| agent | train steps/s, paper (4x512, b256) | train steps/s, cpu preset (2x256, b128) | act p50 / p99 ms (batch 1) |")
    print("|---|---|---|---|")
    for r in rows:
        cpu = r.get("train_steps_per_s_cpu")
        print(f"| {r['agent']} | {r['train_steps_per_s_paper']:.2f} | {'-' if cpu is None else f'{cpu:.0f}'} | "
              f"{r['act_p50_ms']:.2f} / {r['act_p99_ms']:.2f} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
