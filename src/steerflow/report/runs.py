"""Reading run directories: finding them (recursively), and every seed of one with its evaluation
curve (`config.json`, `eval.csv`, `final.json`, `run_info.json`, `failed.json`, as written by
`train.train`). A directory that cannot be read raises ValueError naming the file at fault."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path


def read_curve(eval_csv: Path) -> dict[int, dict[int, float]]:
    """eval.csv → {seed: {step: success}} (a step evaluated twice, e.g. around a resume, keeps
    its last row). ValueError naming the file when it is malformed."""
    curve: dict[int, dict[int, float]] = {}
    with open(eval_csv, newline="") as f:
        try:
            reader = csv.DictReader(f)
            missing = {"step", "seed", "success"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"missing column(s) {sorted(missing)} in header {reader.fieldnames}")
            for row in reader:
                try:
                    curve.setdefault(int(row["seed"]), {})[int(row["step"])] = float(row["success"])
                except (TypeError, ValueError) as err:
                    raise ValueError(f"line {reader.line_num}: {err}") from err
        except (ValueError, csv.Error) as err:
            raise ValueError(f"malformed {eval_csv}: {err}; expected columns step, seed, success "
                             "as written by `steerflow train`") from err
    return curve


@dataclass
class SeedRun:
    """One seed of one run directory."""

    run_dir: Path
    agent: str
    task: str
    preset: str
    overrides: dict
    steps: int  # configured train_config.steps
    seed: int
    curve: dict[int, float]  # eval step → success
    episodes: int
    device: str
    commit: str
    impl: str = "steerflow"  # "reference": a reference implementation's run (benchmarks/parity)
    failed: str | None = None  # why the run failed (failed.json), e.g. "diverged at step 140"

    @property
    def last_step(self) -> int:
        return max(self.curve, default=0)

    @property
    def finished(self) -> bool:
        return self.failed is None and self.steps > 0 and self.steps in self.curve and self.last_step == self.steps

    @property
    def status(self) -> str:
        if self.failed is not None:
            return f"failed ({self.failed})"
        if self.last_step > self.steps:
            return f"inconsistent (evaluated at step {self.last_step}, configured {self.steps} steps)"
        return f"incomplete ({self.last_step}/{self.steps} steps)"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed {path}: not valid JSON ({err})") from err


def _looks_like_run_config(path: Path) -> bool:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("run"), dict) and "train_config" in cfg


def load_run(run_dir: str | os.PathLike) -> list[SeedRun]:
    """Every seed of a run directory, with its evaluation curve so far."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {cfg_path} does not exist")
    cfg = _read_json(cfg_path)
    try:
        run = cfg["run"]
        agent, task = run["agent"], run["task"]
        if not (isinstance(agent, str) and isinstance(task, str)):
            raise TypeError("run.agent and run.task must be strings")
        seeds = [int(s) for s in run["seeds"]]
        steps = int(cfg["train_config"]["steps"])
        overrides = dict(run.get("overrides") or {})
        if run.get("base_from"):  # the flow fields and train_base come from the frozen base: name it instead
            overrides = {k: v for k, v in overrides.items() if not (k.startswith("flow.") or k == "train_base")}
            overrides["base_from"] = Path(run["base_from"]).name
        preset = str(run.get("preset", "?"))
        episodes = int(cfg["train_config"].get("eval_episodes", 0))
        impl = str(run.get("impl", "steerflow"))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed {cfg_path}: {type(err).__name__}: {err}; expected "
                         "{'run': {agent, task, seeds, preset, overrides}, 'train_config': {steps, ...}} "
                         "as written by `steerflow train`") from err
    csv_path = run_dir / "eval.csv"
    curves = read_curve(csv_path) if csv_path.exists() else {}
    stray = sorted(set(curves) - set(seeds))
    if stray:
        raise ValueError(f"malformed {csv_path}: seed(s) {stray} are not among the seeds {seeds} of {cfg_path}")
    meta = {}
    for name in ("final.json", "run_info.json"):  # run_info.json wins for device and commit
        if (run_dir / name).is_file():
            data = _read_json(run_dir / name)
            if isinstance(data, dict):
                meta.update({k: data[k] for k in ("device", "commit", "episodes") if k in data})
    if "episodes" in meta:
        episodes = int(meta["episodes"])
    if int(cfg["train_config"].get("online_steps", 0)):  # an online phase ends where its final.json says
        final = _read_json(run_dir / "final.json") if (run_dir / "final.json").is_file() else None
        steps = int(final["steps"]) if isinstance(final, dict) and "online_env_steps" in final else max(
            (t for c in curves.values() for t in c), default=0) + 1  # unfinished: its end is not known yet
    failed = None
    if (run_dir / "failed.json").is_file():
        info = _read_json(run_dir / "failed.json")
        info = info if isinstance(info, dict) else {}
        names = sorted(info.get("losses") or {})
        losses = ", ".join([k for k in names if "loss" in k] or names) or "losses"
        failed = f"{info.get('status', 'failed')}: non-finite {losses} at step {info.get('step', '?')}"
    return [SeedRun(run_dir=run_dir, agent=agent, task=task, preset=preset, overrides=overrides, steps=steps,
                    seed=s, curve=curves.get(s, {}), episodes=episodes, device=str(meta.get("device", "unknown")),
                    commit=str(meta.get("commit", "unknown")), impl=impl, failed=failed) for s in seeds]


_SKIP_DIRS = {"checkpoints", "evals", "__pycache__", "node_modules"}


def find_run_dirs(paths) -> list[Path]:
    """Run directories given directly or found (recursively) under the given directories."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no run directories given")
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if not p.is_dir():
            raise ValueError(f"{p} is not a directory; pass run directories or directories that contain them")
        before = len(found)
        for root, dirs, files in os.walk(p):
            here = Path(root)
            if "config.json" in files and ({"eval.csv", "run_info.json", "metrics.csv"} & set(files)
                                           or _looks_like_run_config(here / "config.json")):
                found.setdefault(here.resolve(), None)
                dirs[:] = []  # a run directory's checkpoints/evals hold no further runs
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        if len(found) == before and not any(f.is_relative_to(p.resolve()) for f in found):
            raise FileNotFoundError(f"{p} contains no run directory (searched recursively for a config.json "
                                    "with an eval.csv beside it, as written by `steerflow train`)")
    return list(found)


def read_runs(dirs: list[Path]) -> tuple[list[SeedRun], list[dict]]:
    """Every seed of `dirs`, and the directories that cannot be read ({run_dir, error}): listed, never fatal."""
    runs, malformed = [], []
    for d in dirs:
        try:
            runs += load_run(d)
        except (ValueError, OSError, KeyError, TypeError) as err:
            malformed.append({"run_dir": str(d), "error": str(err)})
    return runs, malformed
