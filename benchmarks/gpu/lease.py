"""One GPU lease, one command: paper-size LPS and QC-FQL on cube-single, records back in three files.

A lent GPU machine gives 15 minutes in all (its start included), at most 10 per command, and
returns at most 8 files from `$OUT` (two folders down, 64 MiB). This script is that one command:

    # here, before the lease (network to PyPI): the wheels the GPU image lacks, and the commit
    .venv/bin/python benchmarks/gpu/lease.py prepare
    # there, through the device tool's `run` with carry [".whl"] and timeout_s 590:
    python3 benchmarks/gpu/lease.py run --out "$OUT"
    # anywhere, on the CPU at smoke size with short deadlines, checking what $OUT would hold:
    .venv/bin/python benchmarks/gpu/lease.py run --rehearse --out /tmp/lease-out

`run`, minute by minute of its `--budget-s` (540 s by default):
  0:00  versions and `jax.devices()`: a machine without its GPU fails here, in seconds
  0:05  the carried wheels into /tmp/site (MuJoCo, OGBench, gymnasium, tyro, flax and optax pinned)
  0:30  the dataset on every core: `--episodes` (400) cube-single episodes of 1001 steps
  ~1:40 the agents in turn (`--agents`), each one unit: the `paper` preset (4x512 nets, batch 256)
        with every task of `--tasks` x 3 seeds vmapped in one program (one compilation, the
        GPU's width used), given an equal share of what is left as its `max_wall_s`; it stops,
        evaluates 50 episodes per task and seed and writes each task's final.json at the step it
        reached
  ~8:40 `$OUT/records.tgz` (every run file but checkpoints), `$OUT/summary.txt` (GPU, steps reached,
        steps/s, success per seed with a 95% bootstrap CI per unit) and `$OUT/log.txt` (all output)

Nothing renders (`MUJOCO_GL=disable`); matmuls run at `highest` precision so figures compare with
the CPU's; GPU memory is allocated as needed, not 75% up front; progress bars go to log.txt only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
COMMIT = WHEELS / "COMMIT"  # written by `prepare`: `.git` does not travel to the GPU machine
# what the GPU image lacks or holds at another version, pinned as pyproject.toml pins them
MISSING = ["mujoco==4.0.0", "mujoco-core==4.0.0", "ogbench==1.2.2", "dm_control==1.0.50", "dm-env", "dm-tree",
           "labmaze", "gymnasium==1.4.0", "farama-notifications", "tyro==1.0.17", "docstring-parser", "typeguard",
           "pyopengl", "glfw", "flax==0.12.8", "optax==0.2.8"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]
AGENTS = "lps,qc-fql"
TASKS = ",".join(f"cube-single-task{t}" for t in range(1, 6))  # one domain: they share the data
#: what the device tool brings back from $OUT
LIMITS = {"files": 8, "depth": 2, "bytes": 64 * 2**20, "file_bytes": 16 * 2**20}
# per task of a unit, after its deadline: the evaluation (150 episodes), checkpoint and final.json; a
# rehearsal's evaluates 2 episodes, but on a CPU that other work may share, where its first training
# call (the compilation) can also run past a short deadline
EVAL_RESERVE_S = {False: 45, True: 40}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="download the wheels the GPU image lacks into .whl/ and note the commit")
    r = sub.add_parser("run", help="everything the lease does, records into --out")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/lease-out")))
    r.add_argument("--agents", default=AGENTS, help="agents trained in this order, one unit each")
    r.add_argument("--tasks", default=TASKS, help="tasks of one domain, vmapped together in each unit")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--episodes", type=int, default=400, help="dataset episodes (every core generates)")
    r.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for the whole command")
    r.add_argument("--min-unit-s", type=float, default=None,
                   help="a unit given less than this is skipped (90 s; 20 s in a rehearsal)")
    r.add_argument("--rehearse", action="store_true",
                   help="on this machine: smoke preset, 3 episodes, no wheels; then check $OUT's limits")
    return p.parse_args(argv)


def prepare() -> int:
    WHEELS.mkdir(exist_ok=True)
    for spec in MISSING:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        *[a for plat in PLATFORMS for a in ("--platform", plat)], "-d", str(WHEELS), spec], check=True)
    slim_dm_control()
    sys.path.insert(0, str(ROOT / "src"))
    from steerflow.runinfo import git_commit

    COMMIT.write_text(git_commit() + "\n")
    size = sum(f.stat().st_size for f in WHEELS.glob("*.whl")) / 2**20
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels, {size:.1f} MiB in {WHEELS} (a call carries 64 MiB); "
          f"commit {COMMIT.read_text().strip()}")
    return 0


SLIM_DROP = ("dm_control/suite/", "dm_control/locomotion/")  # ~105 MB of assets OGBench never loads


def slim_dm_control() -> None:
    """Rewrite the dm_control wheel without the suite and locomotion assets (56 → ~4 MiB), so the
    wheels fit what a call carries; OGBench uses only `dm_control.mjcf`."""
    import zipfile

    (wheel,) = WHEELS.glob("dm_control-*.whl")
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith(SLIM_DROP):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                dropped = tuple(d.encode() for d in SLIM_DROP)
                data = b"".join(line + b"\n" for line in data.splitlines() if not line.startswith(dropped))
            dst.writestr(item, data)
    os.replace(slim, wheel)


class Lease:
    """The command's clock, its log file and the environment every child runs in."""

    def __init__(self, args):
        self.args, self.start = args, time.monotonic()
        self.work = Path("/tmp/lease-work") if not args.rehearse else args.out.with_name(args.out.name + "-work")
        self.work.mkdir(parents=True, exist_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)
        self.log = open(args.out / "log.txt", "a", buffering=1)
        site = [] if args.rehearse else ["/tmp/site"]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([*site, str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                    "MUJOCO_GL": "disable", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
                    "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1",
                    "STEERFLOW_DATA": str(self.work / "data"),
                    "STEERFLOW_COMMIT": COMMIT.read_text().strip() if COMMIT.exists() else _local_commit()}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def say(self, line: str) -> None:
        """One line on stdout (the device tool keeps its last 12,000 characters) and in log.txt."""
        line = f"[{time.monotonic() - self.start:6.1f} s] {line}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def call(self, name: str, argv: list[str], timeout: float) -> int:
        """A child whose whole output goes to log.txt; its exit code (124 when it ran out of time)."""
        self.log.write(f"--- {name}: {' '.join(argv)}\n")
        try:
            code = subprocess.run(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                  timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            code = 124
        self.say(f"{name}: exit {code}")
        return code


def _local_commit() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from steerflow.runinfo import git_commit

    return git_commit()


def probe(lease: Lease) -> int:
    """Versions and the devices JAX sees, before anything costly."""
    code = ("import sys, jax, jaxlib, numpy; print('python', sys.version.split()[0], 'jax', jax.__version__, "
            "'jaxlib', jaxlib.__version__, 'numpy', numpy.__version__); print('devices', jax.devices())")
    out = subprocess.run([sys.executable, "-c", code], env=lease.env, capture_output=True, text=True, timeout=120)
    for line in (out.stdout + out.stderr).strip().splitlines()[-4:]:
        lease.say(line)
    if out.returncode == 0 and not lease.args.rehearse and "cpu" in out.stdout.split("devices", 1)[-1].lower():
        lease.say("no GPU among JAX's devices: stopping before the lease is spent on a CPU")
        return 3
    return out.returncode


def install(lease: Lease) -> int:
    wheels = sorted(map(str, WHEELS.glob("*.whl")))
    if not wheels:
        lease.say(f"no wheels in {WHEELS}: run `lease.py prepare` here and carry .whl")
        return 2
    return lease.call("install", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                  "--no-compile", "--upgrade", "--target", "/tmp/site", *wheels], lease.left())


def units(args) -> list[tuple[str, str]]:
    """(agent, comma-separated tasks) per unit."""
    return [(a, args.tasks) for a in args.agents.split(",") if a]


def check_units(lease: Lease, pairs: list[tuple[str, str]]) -> int:
    """Every unit resolved at its size (agent, tasks, preset) before the data and the training: 2 if one is wrong."""
    sys.path[:0] = [p for p in lease.env["PYTHONPATH"].split(os.pathsep) if p]
    from steerflow.train import RunSpec, check_run

    for agent, tasks in pairs:
        try:
            check_run(RunSpec(agent=agent, task=tasks, seeds=[0], preset="smoke" if lease.args.rehearse else "paper"))
        except (ValueError, KeyError) as err:
            lease.say(f"--agents {agent} --tasks {tasks}: {err}")
            return 2
    return 0


def unit_name(agent: str, tasks: str) -> str:
    names = tasks.split(",")
    return f"{agent}-{names[0]}" if len(names) == 1 else f"{agent}-{names[0].split('-task')[0]}"


def train_unit(lease: Lease, agent: str, tasks: str, share: float) -> Path:
    args = lease.args
    run_dir = lease.work / "runs" / unit_name(agent, tasks)
    wall = max(share - EVAL_RESERVE_S[args.rehearse] * len(tasks.split(",")), 1)
    # the rehearsal: smoke nets with more steps than its deadline allows, so the wall stop is exercised
    preset, steps = ("smoke", 1_000_000) if args.rehearse else ("paper", 1_000_000)
    train_set = {"dataset_episodes": args.episodes, "dataset_episode_steps": 1001, "eval_every": steps,
                 "checkpoint_every": steps, "max_wall_s": round(wall),
                 "eval_workers": 0 if args.rehearse else max((os.cpu_count() or 2) - 2, 1)}
    argv = [sys.executable, "-m", "steerflow.cli", "train", "--agent", agent, "--task", tasks, "--seeds", args.seeds,
            "--parallel", "vmap", "--out", str(run_dir), "--resume", "--preset", preset, "--steps", str(steps),
            "--train-set", *(f"{k}={v}" for k, v in train_set.items())]
    lease.call(f"{agent} {tasks} (wall budget {wall:.0f} s)", argv, min(share + 60, lease.left() - 20))
    return run_dir


def run_summaries(run_dir: Path) -> list[str]:
    """One line per task: a multi-task unit's directory holds one run directory per task."""
    tasks = run_dir / "tasks.json"
    dirs = [run_dir / d for d in json.loads(tasks.read_text())["dirs"]] if tasks.exists() else [run_dir]
    return [unit_summary(d, f"{run_dir.name}/{d.name}" if d != run_dir else run_dir.name) for d in dirs]


def unit_summary(run_dir: Path, name: str) -> str:
    """One line: agent, task, steps reached, steps/s, success per seed and its 95% bootstrap CI."""
    from steerflow.report import bootstrap_ci

    final_path = run_dir / "final.json"
    if not final_path.exists():
        return f"{name}: no final.json (see log.txt)"
    final = json.loads(final_path.read_text())
    metrics = run_dir / "metrics.csv"
    rows = metrics.read_text().splitlines() if metrics.exists() else []  # none before the first log step
    col = rows[0].split(",").index("steps_per_s") if rows and "steps_per_s" in rows[0] else None
    sps = [float(r.split(",")[col]) for r in rows[1:] if col is not None and r.split(",")[col] not in ("", "nan")]
    success = [float(s) for s in final["final_success"]]
    lo, hi = bootstrap_ci(success)
    return (f"{name}: {final['steps']} steps (of {final.get('target_steps', final['steps'])}), "
            f"{(sum(sps[-5:]) / len(sps[-5:])) if sps else float('nan'):.0f} steps/s, success "
            f"{100 * sum(success) / len(success):.1f} [{100 * lo:.1f}, {100 * hi:.1f}] per seed "
            f"{[round(100 * s, 1) for s in success]}, {final['device']}")


def pack(lease: Lease, run_dirs: list[Path]) -> None:
    """Every run file except checkpoints into records.tgz; summary.txt beside it."""
    out = lease.args.out
    tmp = out / f".records.tgz.{os.getpid()}"
    with tarfile.open(tmp, "w:gz") as tar:
        for run_dir in run_dirs:
            for f in sorted(run_dir.rglob("*")):
                if f.is_file() and "checkpoints" not in f.relative_to(run_dir).parts:
                    tar.add(f, arcname=str(Path(run_dir.name) / f.relative_to(run_dir)))
    os.replace(tmp, out / "records.tgz")
    lines = [line for d in run_dirs for line in run_summaries(d)]
    (out / "summary.txt").write_text("\n".join([f"commit {lease.env['STEERFLOW_COMMIT']}", *lines]) + "\n")
    for line in lines:
        lease.say(line)


def check_out(out: Path) -> list[str]:
    """What the device tool would not bring back from `out`: too many files, too deep, too big, odd names."""
    files = [f for f in out.rglob("*") if f.is_file()]
    problems = [f"{len(files)} files (at most {LIMITS['files']})"] if len(files) > LIMITS["files"] else []
    total = sum(f.stat().st_size for f in files)
    if total > LIMITS["bytes"]:
        problems.append(f"{total} bytes in all (at most {LIMITS['bytes']})")
    for f in files:
        rel = f.relative_to(out)
        if len(rel.parts) - 1 > LIMITS["depth"]:
            problems.append(f"{rel}: more than {LIMITS['depth']} folders down")
        if f.stat().st_size > LIMITS["file_bytes"]:
            problems.append(f"{rel}: {f.stat().st_size} bytes (at most {LIMITS['file_bytes']})")
        if not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
    return problems


def run(args) -> int:
    lease = Lease(args)
    pairs = units(args)
    lease.say(f"lease: {len(pairs)} unit(s), budget {args.budget_s:.0f} s, records into {args.out}")
    code = probe(lease) or (0 if args.rehearse else install(lease)) or check_units(lease, pairs)
    if code:
        return code
    domains = sorted({t.split("-task")[0] for _, tasks in pairs for t in tasks.split(",")})
    for domain in domains:  # a unit's own generation would use one core; this uses them all
        gen = [sys.executable, "-m", "steerflow.cli", "data", "generate", domain, "--episodes", str(args.episodes),
               "--workers", str(os.cpu_count() or 1)]
        if lease.call(f"data {domain} ({args.episodes} episodes)", gen, lease.left()):
            return 1
    run_dirs = []
    for i, (agent, task) in enumerate(pairs):
        share = (lease.left() - 30) / (len(pairs) - i)  # 30 s kept for packing
        least = args.min_unit_s if args.min_unit_s is not None else (20 if args.rehearse else 90)
        if share < least:
            lease.say(f"{agent} {task}: skipped, {share:.0f} s left for it (at least {least:.0f})")
            continue
        run_dirs.append(train_unit(lease, agent, task, share))
    pack(lease, run_dirs)
    lease.log.close()
    problems = check_out(args.out)
    print("\n".join(["$OUT would not come back whole:", *problems]) if problems else
          f"$OUT within the device tool's limits: {sorted(p.name for p in args.out.iterdir())}")
    return 1 if problems else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return prepare() if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
