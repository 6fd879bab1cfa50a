"""The paper protocol's slice on a GPU machine (issue 9, item 8), ready to run when one is lent.

    # here (CPU, network to PyPI): fetch the wheels the GPU image lacks into .whl/ (~40 MiB)
    .venv/bin/python benchmarks/gpu/paper_slice.py prepare
    # there (the device tool's `run`, carrying .whl): one command does everything
    python3 benchmarks/gpu/paper_slice.py run --steps 200000 --out "$OUT"
    # anywhere: what `run` would do, with every configuration resolved, nothing trained
    .venv/bin/python benchmarks/gpu/paper_slice.py run --dry-run

`run` (1) installs the carried wheels into /tmp/site (the GPU image has jax, flax, optax, numpy,
h5py and matplotlib, but not MuJoCo, OGBench, dm_control, gymnasium or tyro), (2) generates the
domain's full 1000+100-episode dataset with one worker per CPU core, (3) trains each agent with
the `paper` preset (4x512 nets, batch 256) and its seeds vmapped in one process, for `--steps`
(the paper's 1M does not fit the lease; the slice is what fits, evaluated every `--eval-every`),
and (4) copies each unit's records (config, final, evals, metrics) into `--out/<unit>/` as soon
as that unit finishes, so a lease that ends early keeps the finished units. The device machine
names itself in every record's `device` field.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
# what the GPU image lacks, pinned as steerflow pins them (pyproject.toml), plus their own needs
MISSING = ["mujoco==4.0.0", "mujoco-core==4.0.0", "ogbench==1.2.2", "dm_control==1.0.50", "dm-env", "dm-tree",
           "labmaze", "gymnasium==1.4.0", "farama-notifications", "tyro==1.0.17", "docstring-parser", "typeguard",
           "pyopengl", "glfw"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="download the wheels the GPU image lacks into .whl/")
    r = sub.add_parser("run", help="install, generate data, train the slice, write records")
    r.add_argument("--domain", default="cube-single")
    r.add_argument("--tasks", default="2,4", help="task numbers (the tuning tasks by default)")
    r.add_argument("--agents", default="lps,bc-mf,qc-fql")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--steps", type=int, default=200_000)
    r.add_argument("--eval-every", type=int, default=50_000)
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="data-generation processes")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "runs" / "gpu_slice")))
    r.add_argument("--dry-run", action="store_true")
    return p.parse_args(argv)


def prepare() -> int:
    WHEELS.mkdir(exist_ok=True)
    for spec in MISSING:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[a for plat in PLATFORMS for a in ("--platform", plat)],
               "-d", str(WHEELS), spec]
        subprocess.run(cmd, check=True)
    slim_dm_control()
    size = sum(f.stat().st_size for f in WHEELS.glob("*.whl")) / 2**20
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels, {size:.1f} MiB in {WHEELS} (the device tool carries 64 MiB)")
    return 0


SLIM_DROP = ("dm_control/suite/", "dm_control/locomotion/")  # ~105 MB of assets OGBench never loads


def slim_dm_control() -> None:
    """Rewrite the dm_control wheel without the suite and locomotion assets (56 → ~4 MiB), so the
    wheels fit the 64 MiB the device tool carries; OGBench uses only `dm_control.mjcf`."""
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


def plan(args) -> list[dict]:
    """Every step of the run, resolved: install, generate, and one training unit per (agent, task)."""
    from steerflow.sweep import parse_seeds, split_list
    from steerflow.train import RunSpec, resolve

    seeds = parse_seeds(args.seeds)
    steps: list[dict] = [
        {"name": "install", "cmd": install_command()},
        {"name": "data", "cmd": [sys.executable, "-m", "steerflow.cli", "data", "generate", args.domain,
                                 "--episodes", "1000", "--seed", "0", "--workers", str(args.workers)]},
    ]
    for agent in split_list("--agents", args.agents):
        for t in split_list("--tasks", args.tasks):
            task = f"{args.domain}-task{t}" + ("-sparse" if args.domain in ("scene", "puzzle-3x3") else "")
            train_set = {"steps": args.steps, "eval_every": args.eval_every, "checkpoint_every": args.eval_every}
            run = RunSpec(agent=agent, task=task, seeds=seeds, preset="paper",
                          train_overrides={k: str(v) for k, v in train_set.items()})
            _, config, tc = resolve(run)  # fails here, before the lease is spent, on a bad value
            name = f"{agent}-{task}"
            steps.append({"name": name, "unit": True, "run_dir": str(args.out / "runs" / name),
                          "resolved": {"steps": tc.steps, "batch_size": tc.batch_size, "seeds": seeds,
                                       "base_hidden": list(config.base.hidden)},
                          "cmd": [sys.executable, "-m", "steerflow.cli", "train", "--agent", agent, "--task", task,
                                  "--seeds", ",".join(map(str, seeds)), "--preset", "paper", "--parallel", "vmap",
                                  "--out", str(args.out / "runs" / name), "--resume",
                                  "--train-set", *(f"{k}={v}" for k, v in train_set.items())]})
    return steps


def copy_records(run_dir: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "run_info.json", "final.json", "eval.csv", "metrics.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def run(args) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    if not args.dry_run:  # the installed wheels must be importable by plan() and every child
        site = "/tmp/site"
        os.environ["PYTHONPATH"] = os.pathsep.join([site, str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        sys.path[:0] = [site]
        os.environ.setdefault("MUJOCO_GL", "egl")
        if not list(WHEELS.glob("*.whl")):
            raise SystemExit(f"no wheels in {WHEELS}: run `paper_slice.py prepare` here and carry .whl")
        subprocess.run(install_command(), check=True)
    steps = plan(args)
    if args.dry_run:
        for step in steps:
            print(f"[{step['name']}] {shlex.join(step['cmd'][:12])}{' ...' if len(step['cmd']) > 12 else ''}")
            if "resolved" in step:
                print(f"    resolved: {json.dumps(step['resolved'])}")
        print(f"{sum(1 for s in steps if s.get('unit'))} training unit(s); records would go to {args.out}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for step in steps[1:]:  # install ran above
        start = time.time()
        code = subprocess.run(step["cmd"], cwd=ROOT).returncode
        print(f"[{step['name']}] exit {code} in {time.time() - start:.0f} s", flush=True)
        if step.get("unit") and code == 0:
            copy_records(Path(step["run_dir"]), args.out / step["name"])
        elif code != 0 and not step.get("unit"):
            return code
    return 0


def install_command() -> list[str]:
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
            "--target", "/tmp/site", *map(str, sorted(WHEELS.glob("*.whl")))]


def main(argv=None) -> int:
    args = parse_args(argv)
    return prepare() if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
