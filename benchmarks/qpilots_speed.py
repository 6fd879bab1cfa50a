"""QPILOTS next to the baselines it is compared with, measured side by side in one run.

For QPILOTS-U, QPILOTS-M, QC-FQL, QC-BoN and BC-FM, at the CPU protocol's size (2x256 nets,
batch 128; every agent with the QPILOTS critic, J = 10, mean − 0.5·std, SiLU, and velocity net,
SiLU with Fourier time features, so the networks are the same everywhere):
  train   steps/s of the jitted training call, 1 seed, one CPU thread, synthetic cube-single-shaped
          data (obs 28, chunk 5x5), after compilation;
  act     latency of one jitted `act` call at batch 1 (one robot) and batch 50 (one evaluation
          wave), p50 and p99, result fetched to the host each call;
  and for QPILOTS-M the act latency with the N posterior samples evaluated one call at a time
  (`batch_posterior=false`) instead of in one call of batch N·B.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 1 .venv/bin/python benchmarks/qpilots_speed.py [--seconds 20] [--calls 30]

Writes benchmarks/results/qpilots_speed_<cpu|gpu>.json (the machine and its load are recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agents_speed import act_latency  # noqa: E402
from throughput import bare  # noqa: E402

AGENTS = ("qpilots-u", "qpilots-m", "qc-fql", "qc-bon", "bc-fm")
# the QPILOTS critic and velocity net for the baselines too (the QPILOTS agents' defaults)
SHARED = {"qc-fql": {"critic": "qpilots", "flow": "qpilots"}, "qc-bon": {"critic": "qpilots", "flow": "qpilots"},
          "bc-fm": {"flow": "qpilots"}}


def main() -> None:
    from steerflow.runinfo import atomic_write_json, device_description, git_commit

    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--variants", action="store_true",
                        help="also QPILOTS with steered_targets=false (a' from the base's own sampler)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    device = device_description()
    rows = []
    jobs = [(name, SHARED.get(name, {})) for name in args.agents.split(",")]
    if args.variants:
        jobs += [(name, {"steered_targets": "false"}) for name in ("qpilots-u", "qpilots-m")]
    for name, extra in jobs:
        # updates per host call as the trainer scans them, fewer for the costly ones (a short measurement)
        per_call = {"qpilots-m": 1, "qc-bon": 1, "qpilots-u": 5}.get(name, 20)
        train = bare(name, "cpu", 1, args.seconds, count_flops=False, per_call=per_call, overrides=extra)
        row = {"agent": name, "overrides": extra, "train_steps_per_s": train["steps_per_s_per_seed"],
               "updates_per_call": per_call}
        for batch in (1, 50):
            lat = act_latency(name, "cpu", args.calls, batch=batch, overrides=extra)
            row[f"act_b{batch}_p50_ms"], row[f"act_b{batch}_p99_ms"] = lat["act_p50_ms"], lat["act_p99_ms"]
        if name == "qpilots-m" and not extra:
            for batch in (1, 50):
                lat = act_latency(name, "cpu", args.calls, batch=batch, overrides={**extra, "batch_posterior": "false"})
                row[f"act_b{batch}_p50_ms_posterior_one_call_each"] = lat["act_p50_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = HERE / "results" / ("qpilots_speed_cpu.json" if "cpu" in device.lower() else "qpilots_speed_gpu.json")
    atomic_write_json(path, {"device": device, "commit": git_commit(), "load_average_at_end": os.getloadavg(),
                             "protocol": "cpu-preset size (2x256, batch 128), QPILOTS critic and flow net for all, 1 seed, "
                                         "one thread, after compile; act at batch 1 and 50", "rows": rows})
    print("\n| agent | train steps/s | act p50 ms, batch 1 | act p50 ms, batch 50 |\n|---|---|---|---|")
    for r in rows:
        label = r["agent"] + "".join(f" {k}={v}" for k, v in r["overrides"].items())
        print(f"| {label} | {r['train_steps_per_s']:.1f} | {r['act_b1_p50_ms']:.2f} | {r['act_b50_p50_ms']:.2f} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
