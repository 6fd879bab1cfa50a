"""The cost of a sweep backend: the same smoke units through `--backend local` and through a local
Ray cluster (`--backend ray`), one unit per CPU of this process's affinity set at a time.

Units: bc-mf, one seed, smoke preset, cube-single tasks 1-4 x a learning-rate grid (8 values: 32
units); every unit is a `steerflow train --resume` process (data load, compilation, 40 steps, a
2-episode evaluation), so what is measured is mostly the fixed cost of a unit. The JAX compilation
cache is shared by the units (as the tests do): units differing only in the task reuse the
programs. Each backend gets a fresh sweep directory; the dataset cache is warmed first.

  wall_s            the sweep command, start to end (for Ray: cluster start-up included)
  ray_start_s       ray.init of the local cluster (as the driver does it)
  s_per_unit        wall_s / units
  overhead_per_unit_s  (wall_s - the summed in-loop time of the units / parallel) / units: process
                    start, imports, data load, scheduling; the in-loop time is each unit's
                    final.json `wall_s_this_process` (training + evaluation, compilation included)
  cpu_s, cpu_util   CPU seconds of the driver's process tree (the Ray cluster's processes are its
                    children), sampled every 0.25 s with psutil (a lower bound: up to 0.25 s of a
                    process's last moments are missed), over wall_s x the CPUs it may use

    MUJOCO_GL=egl taskset -c 1 .venv/bin/python benchmarks/sweep_backends.py [--units 32]

Writes benchmarks/results/sweep_backends_cpu.json (machine, load average, commit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = [f"cube-single-task{i}" for i in (1, 2, 3, 4)]
RATES = ["1e-4", "2e-4", "3e-4", "5e-4", "7e-4", "1e-3", "2e-3", "3e-3"]


class TreeCPU:
    """CPU seconds of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.25):
        import psutil

        self.root, self.every_s, self.seen, self.stop = psutil.Process(pid), every_s, {}, threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                except psutil.Error:
                    pass
            self.stop.wait(self.every_s)

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.seen.values())


def sweep_argv(out: Path, n_units: int, backend: str) -> list[str]:
    rates = RATES[: max(1, -(-n_units // len(TASKS)))]
    return [sys.executable, "-m", "steerflow.cli", "sweep", "--out", str(out), "--agents", "bc-mf",
            "--tasks", ",".join(TASKS), "--seeds", "0", "--preset", "smoke", "--grid",
            f"learning_rate={','.join(rates)}", "--backend", backend, "--jobs", str(len(os.sched_getaffinity(0)))]


def run_backend(root: Path, n_units: int, backend: str, env: dict) -> dict:
    out = root / backend
    argv = sweep_argv(out, n_units, backend)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=open(root / f"{backend}.log", "wb"), stderr=subprocess.STDOUT)
    cpu = TreeCPU(proc.pid)
    code = proc.wait()
    wall = time.perf_counter() - t0
    cpu_s = cpu.total()
    if code:
        raise SystemExit(f"{backend} sweep failed (exit {code}); see {root / f'{backend}.log'}")
    finals = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/final.json"))]
    in_loop = [f["wall_s_this_process"] for f in finals]
    cores = len(os.sched_getaffinity(0))
    return {"backend": backend, "units": len(finals), "parallel": cores, "wall_s": round(wall, 1),
            "s_per_unit": round(wall / len(finals), 2),
            "unit_in_loop_s_median": round(statistics.median(in_loop), 2),
            "overhead_per_unit_s": round((wall - sum(in_loop) / cores) / len(finals), 2),
            "cpu_s": round(cpu_s, 1), "cpu_util": round(cpu_s / (wall * cores), 3),
            "mean_success": round(statistics.mean(f["mean"] for f in finals), 4)}


def ray_start_s(env: dict) -> float:
    code = ("import os, time; t = time.perf_counter(); import ray; "
            "ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False); "
            "print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    from steerflow.runinfo import atomic_write_json, device_description, git_commit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--backends", default="local,ray")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sweep_backends_"))
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               RAY_enable_metrics_collection="0",
               # Ray's memory monitor reacts to the whole machine's memory, which other jobs use here
               RAY_memory_monitor_refresh_ms="0")
    # the datasets first (and the compilation cache with them), so neither backend pays for them
    subprocess.run([*sweep_argv(root / "warm", len(TASKS), "local")], env=env, check=True, capture_output=True)
    rows, path = [], HERE / "results" / "sweep_backends_cpu.json"
    try:
        for backend in args.backends.split(","):
            row = run_backend(root, args.units, backend, env)
            if backend == "ray":
                row["ray_start_s"] = ray_start_s(env)
            rows.append(row)
            print(json.dumps(row), flush=True)
            atomic_write_json(path, {  # after each backend: a run cut short keeps what it measured
                "device": device_description(), "commit": git_commit(),
                "cpus_allowed": len(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg(),
                "note": "taken on one shared, loaded core (core 0 runs a study; core 1 is shared with other "
                        "jobs): absolute times are inflated and noisy",
                "rows": rows})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
