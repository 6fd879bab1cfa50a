"""Run a reference implementation, unmodified, from a local checkout, on steerflow's data.

    .venv-ref/bin/python benchmarks/parity/run_reference.py --impl lps --reference-dir ~/src/LPS \
        --task cube-single-task2 --seed 0 --dataset-dir ~/.cache/steerflow/data/<key> --out runs/ref-lps

`--impl lps` runs the authors' LPS code (github.com/jellyho/LPS, `main.py --agent agents/lps.py`),
`--impl dsrl-na` the same repository's DSRL-NA re-implementation (`agents/dsrl.py`, the paper's
DSRL baseline), `--impl qc-fql` the Q-chunking code's QC-FQL (github.com/ColinQiyangLi/qc,
`agents/acfql.py`).
Neither is vendored: the user points `--reference-dir` at a clone. This script runs in the
reference venv (`make reference-env`), imports nothing of steerflow but its stdlib-only
provenance helpers (`steerflow.runinfo`), and changes nothing in the checkout.
Everything it needs is placed around the checkout (shared/reference/running_references.md):

* data: a scratch `HOME` whose `.ogbench/data/` links OGBench's file names to steerflow's generated
  files (official key layout), so the references take their default `make_env_and_datasets` path;
* a `robomimic` stub package on `sys.path` (the Q-chunking `main.py` imports it at module level);
* wandb forced to `mode='disabled'`, with `wandb.log` wrapped to capture every logged dict with
  its wall time (the LPS code logs nothing else); the TypeError their last line raises on a
  disabled run (`run.url`) is caught;
* `jnp.clip(a_min=, a_max=)`, which the LPS code calls and jax 0.10 rejects, mapped onto
  `jnp.clip(min, max)` (same meaning).

The output directory is a steerflow-style run directory that `steerflow report` reads beside
steerflow's own runs: `config.json` (run.impl = "reference", the reference's commit and argv),
`eval.csv` (step, seed, success), `evals/step_*.json`, `metrics.csv` (the reference's training
log at each `--log-every` step, with steps/s measured between log points without an evaluation in
between), `wandb_log.jsonl` (every captured call), `final.json`, `run_info.json`. It is written
under a temporary name and renamed when the run has finished, so a killed run leaves no half record.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

# steerflow's provenance helpers and task parser need only the stdlib and numpy, so the reference
# venv imports them from this checkout without steerflow's training stack: both sides then describe
# the device and read a task name alike
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from steerflow import runlock  # noqa: E402
from steerflow.data.tasks import parse_task  # noqa: E402
from steerflow.runinfo import device_description, library_versions  # noqa: E402

IMPLS = {
    "lps": {"repo": "jellyho/LPS", "agent": "lps", "agent_file": "agents/lps.py"},
    "dsrl-na": {"repo": "jellyho/LPS", "agent": "dsrl-na", "agent_file": "agents/dsrl.py"},
    "qc-fql": {"repo": "ColinQiyangLi/qc", "agent": "qc-fql", "agent_file": "agents/acfql.py"},
}
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=sorted(IMPLS), required=True)
    p.add_argument("--reference-dir", type=Path, required=True, help="a clone of the reference repository")
    p.add_argument("--task", required=True, help="steerflow task name, e.g. cube-single-task2[-sparse]")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--dataset-dir", type=Path, required=True,
                   help="steerflow's generated dataset directory (holds DOMAIN-play-v0.npz and -val.npz)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval-every", type=int, default=25_000)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--log-every", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", default="256,256", help="hidden sizes of every network")
    p.add_argument("--alpha", type=float, default=300.0, help="QC-FQL's distillation weight")
    p.add_argument("--preset", default="cpu", help="the steerflow preset these flags mirror (recorded)")
    p.add_argument("--dry-run", action="store_true", help="print the reference command line and exit")
    return p.parse_args(argv)


def task_names(task: str) -> tuple[str, int, bool]:
    """`cube-single-task2-sparse` → (`cube-single`, 2, True), by steerflow's own task parser."""
    try:
        spec = parse_task(task)
    except ValueError as err:
        raise SystemExit(f"--task: {err}") from None
    return spec.domain, spec.task_id, spec.sparse


def reference_argv(args: argparse.Namespace, save_dir: Path) -> list[str]:
    """The reference's own flags for the same task, nets, batch, steps, seed and evaluation."""
    domain, n, sparse = task_names(args.task)
    env_name = f"{domain}-play-singletask-task{n}-v0"
    hidden = f"({args.hidden}{'' if ',' in args.hidden else ','})"  # a Python tuple literal
    common = [f"--env_name={env_name}", "--horizon_length=5", f"--agent.batch_size={args.batch_size}",
              f"--offline_steps={args.steps}", f"--eval_interval={args.eval_every}",
              f"--eval_episodes={args.eval_episodes}", f"--log_interval={args.log_every}",
              f"--seed={args.seed}", f"--save_dir={save_dir}"]
    if IMPLS[args.impl]["repo"] == "jellyho/LPS":
        # the LPS code makes scene and puzzle-3x3 sparse by task name (its main.py), as the paper does;
        # its DSRL-NA takes the same network flags (actor = the FM base, latent actor, critics)
        return [f"--agent={IMPLS[args.impl]['agent_file']}", f"--task_name={domain}-play", f"--task_num={n}",
                "--agent.num_critic=2", f"--agent.actor_hidden_dims={hidden}", f"--agent.critic_hidden_dims={hidden}",
                f"--agent.latent_actor_hidden_dims={hidden}", *common]
    return [f"--agent={IMPLS[args.impl]['agent_file']}", f"--sparse={sparse}", f"--agent.alpha={args.alpha}",
            "--online_steps=0", f"--agent.actor_hidden_dims={hidden}", f"--agent.value_hidden_dims={hidden}", *common]


def reference_commit(ref_dir: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(ref_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ref_dir), "status", "--porcelain"], capture_output=True,
                               text=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def write_robomimic_stub(root: Path) -> None:
    """The few names the Q-chunking code touches at import; nothing calls them for OGBench tasks."""
    pkg = root / "robomimic"
    (pkg / "utils").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("DATASET_REGISTRY = {}\n")
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "env_utils.py").write_text("")
    (pkg / "utils" / "file_utils.py").write_text("")
    (pkg / "utils" / "obs_utils.py").write_text("def initialize_obs_modality_mapping_from_dict(*args, **kwargs):\n"
                                                "    pass\n")


def link_dataset(dataset_dir: Path, home: Path, domain: str) -> None:
    data = home / ".ogbench" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-val"):
        name = f"{domain}-play-v0{suffix}.npz"
        src = dataset_dir / name
        if not src.is_file():
            raise SystemExit(f"--dataset-dir {dataset_dir}: {name} not found (generate it with "
                             f"`steerflow data generate {domain} --episodes N`)")
        dst = data / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve())


class WandbCapture:
    """Replaces wandb.init by a disabled run and records every wandb.log call with its wall time."""

    def __init__(self, path: Path):
        self.file = open(path, "w")
        self.records: list[dict] = []

    def install(self) -> None:
        import wandb

        real_init = wandb.init

        def init(*args, **kwargs):
            kwargs["mode"] = "disabled"
            run = real_init(*args, **kwargs)
            real_log = wandb.log  # init rebinds wandb.log: wrap the bound one

            def log(data, step=None, *a, **kw):
                self.record(data, step)
                return real_log(data, step=step, *a, **kw)

            wandb.log = log
            return run

        wandb.init = init

    def record(self, data: dict, step) -> None:
        row = {"time": time.time(), "step": step}
        for k, v in data.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                continue  # histograms, videos
        self.records.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()


def patch_jnp_clip() -> None:
    """Map the old `a_min`/`a_max` keywords (removed in jax 0.10) onto `min`/`max`: same function."""
    import jax.numpy as jnp

    clip = jnp.clip

    def compat_clip(x, min=None, max=None, *, a_min=None, a_max=None, **kwargs):
        return clip(x, a_min if a_min is not None else min, a_max if a_max is not None else max, **kwargs)

    jnp.clip = compat_clip


def run_reference(args: argparse.Namespace, work: Path, capture: WandbCapture) -> None:
    ref = args.reference_dir.resolve()
    main_py = ref / "main.py"
    if not main_py.is_file():
        raise SystemExit(f"--reference-dir {ref}: no main.py (expected a clone of {IMPLS[args.impl]['repo']})")
    argv = reference_argv(args, work / "save")
    stub = work / "stubs"
    write_robomimic_stub(stub)
    sys.path[:0] = [str(ref), str(stub)]
    os.chdir(ref)  # their config files and imports are relative to the checkout
    capture.install()
    if IMPLS[args.impl]["repo"] == "jellyho/LPS":
        patch_jnp_clip()
    sys.argv = [str(main_py), *argv]
    try:
        runpy.run_path(str(main_py), run_name="__main__")
    except SystemExit as err:  # absl's app.run exits 0 after main
        if err.code not in (0, None):
            raise
    except TypeError as err:  # the last line writes `run.url`, None for a disabled run
        if "not None" not in str(err):
            raise


def write_metrics(records: list[dict], eval_steps: set, seed: int, path: Path) -> None:
    """metrics.csv from the captured log: the training rows, with steps/s between consecutive log
    points whose window holds no evaluation."""
    train_rows = [r for r in records if not any(k.startswith("eval/") for k in r) and r.get("step")]
    rows, prev = [], None
    for r in train_rows:
        sps = ""
        # the references evaluate right after logging step s, so that evaluation falls in [s, next log)
        if prev is not None and not any(prev["step"] <= s < r["step"] for s in eval_steps):
            sps = round((r["step"] - prev["step"]) / (r["time"] - prev["time"]), 2)
        rows.append({"step": int(r["step"]), "seed": seed, "steps_per_s": sps,
                     **{k.split("/", 1)[-1]: v for k, v in r.items() if k.split("/")[-1] not in ("time", "step")}})
        prev = r
    if rows:
        fields = ["step", "seed", "steps_per_s", *sorted({k for row in rows for k in row} - {"step", "seed", "steps_per_s"})]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fields, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def rebuild_metrics(run_dir: Path) -> None:
    """Re-derive a finished reference run's metrics.csv from its wandb_log.jsonl."""
    records = [json.loads(line) for line in (run_dir / "wandb_log.jsonl").read_text().splitlines()]
    seed = json.loads((run_dir / "config.json").read_text())["run"]["seeds"][0]
    write_metrics(records, {int(r["step"]) for r in records if "eval/success" in r}, seed, run_dir / "metrics.csv")


def to_run_dir(args: argparse.Namespace, records: list[dict], tmp: Path, started: float) -> dict:
    """Turn the captured log into steerflow's run-directory records."""
    evals = [(int(r["step"]), r["eval/success"]) for r in records if "eval/success" in r]
    evals = sorted({s: v for s, v in evals}.items())
    if not evals:
        raise SystemExit("the reference logged no eval/success; see its output above")
    seed = args.seed
    with open(tmp / "eval.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["step", "seed", "success"])
        for step, success in evals:
            w.writerow([step, seed, success])
    (tmp / "evals").mkdir(exist_ok=True)
    for step, success in evals:
        (tmp / "evals" / f"step_{step:08d}.json").write_text(json.dumps(
            {"agent": IMPLS[args.impl]["agent"], "task": args.task, "preset": args.preset, "step": step,
             "seeds": [seed], "episodes": args.eval_episodes, "success": [success], "mean": success}))
    write_metrics(records, {s for s, _ in evals}, seed, tmp / "metrics.csv")
    device = device_description()
    commit = reference_commit(args.reference_dir)
    reference = {"repo": IMPLS[args.impl]["repo"], "commit": commit, "argv": reference_argv(args, Path("SAVE_DIR"))}
    config = {"run": {"agent": IMPLS[args.impl]["agent"], "task": args.task, "seeds": [seed], "preset": args.preset,
                      "overrides": {}, "train_overrides": {}, "impl": "reference"},
              "train_config": {"steps": args.steps, "batch_size": args.batch_size, "eval_every": args.eval_every,
                               "eval_episodes": args.eval_episodes, "log_every": args.log_every,
                               "hidden": args.hidden},
              "reference": reference}
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    (tmp / "run_info.json").write_text(json.dumps(
        {"commit": f"{IMPLS[args.impl]['repo']}@{commit}", "device": device, "wall_s": round(time.time() - started, 1),
         "versions": library_versions(), "dataset_dir": str(args.dataset_dir)}, indent=1))
    final_step, final_success = evals[-1]
    final = {"agent": IMPLS[args.impl]["agent"], "impl": "reference", "task": args.task, "preset": args.preset,
             "steps": args.steps, "seeds": [seed], "final_success": [final_success], "mean": final_success,
             "episodes": args.eval_episodes, "device": device, "commit": f"{IMPLS[args.impl]['repo']}@{commit}",
             "overrides": {}}
    if final_step != args.steps:
        raise SystemExit(f"the reference's last evaluation is at step {final_step}, not {args.steps}")
    (tmp / "final.json").write_text(json.dumps(final, indent=1))
    return final


def main(argv=None) -> int:
    args = parse_args(argv)
    domain, _, _ = task_names(args.task)
    out = args.out.resolve()
    args.dataset_dir, args.reference_dir = args.dataset_dir.resolve(), args.reference_dir.resolve()
    if args.dry_run:
        print(" ".join(["python", str(args.reference_dir / "main.py"), *reference_argv(args, out / "save")]))
        return 0
    if (out / "final.json").exists():
        print(f"{out} already holds a finished reference run")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with runlock.hold(runlock.sibling_lock(out), f"reference run directory {out}", hint="choose another --out"):
        final = train_into(args, out, domain)
    print(json.dumps(final))
    return 0


def train_into(args, out: Path, domain: str) -> dict:
    """Train the reference into `out.partial`, then rename it to `out` (the caller holds its lock)."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    work = tmp / "work"
    work.mkdir(parents=True)
    os.environ["HOME"] = str(work / "home")
    link_dataset(args.dataset_dir, work / "home", domain)
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA_FLAGS}".strip()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    started = time.time()
    capture = WandbCapture(tmp / "wandb_log.jsonl")
    run_reference(args, work, capture)
    final = to_run_dir(args, capture.records, tmp, started)
    capture.file.close()
    for log in (work / "save").rglob("*.csv"):  # the Q-chunking code's own CSV logs, kept for provenance
        shutil.copy(log, tmp / f"reference_{log.name}")
    shutil.rmtree(work, ignore_errors=True)  # dataset links, stubs, their save dir (flags.json is in config.json)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return final


if __name__ == "__main__":
    sys.exit(main())
