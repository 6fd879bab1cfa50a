"""Experiment tracking for sweep units: `steerflow sweep --log csv,tensorboard,wandb`.

The run directory's CSV files stay the record every run writes (`metrics.csv`: step, seed, losses,
steps/s; `eval.csv`: step, seed, success; `config.json`, `run_info.json`). When a unit finishes,
the sweep driver exports that record to the trackers asked for, one tracker run per unit grouped
by the sweep (the sweep directory's name):

* `tensorboard`: event files in RUN_DIR/tensorboard, scalars `train/<metric>/seed<k>`,
  `eval/success/seed<k>` and `eval/mean` at their training steps, and the resolved config, the
  git commit and the unit id as a text summary `config`;
* `wandb`: a Weights & Biases run in RUN_DIR/wandb, offline unless WANDB_MODE says otherwise (so
  nothing touches the network; `wandb sync RUN_DIR/wandb/offline-run-*` uploads it later), named
  after the unit, `group` the sweep, the resolved config and commit as its config, the same
  scalars logged at their steps.

An export replaces the unit's previous one (a re-run after a resume exports the whole run again),
so what a tracker shows is the run directory's record. Exporting is not streaming: a tracker sees
a unit when it has ended. The driver exports in a child process (`python -m steerflow.tracking`):
W&B patches process-wide state (stdout, signal handlers) that a sweep driver must keep.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

KINDS = ("csv", "tensorboard", "wandb")


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in str(text).split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ValueError(f"--log {text!r}: expected a comma-separated subset of {','.join(KINDS)}"
                         + (f"; unknown {bad}" if bad else ""))
    return kinds


def check_available(kinds: list[str]) -> None:
    """Fail before any unit runs when a tracker asked for is not installed."""
    import importlib

    for kind, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if kind in kinds:
            try:
                importlib.import_module(module)
            except ImportError:
                raise ValueError(f"--log {kind} needs the `{module}` package: pip install -e '.[tracking]'") from None


def read_record(run_dir: Path) -> dict:
    """The run directory's record: {"scalars": {step: {tag: value}}, "config": {...}}."""
    run_dir = Path(run_dir)
    scalars: dict[int, dict[str, float]] = defaultdict(dict)
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv") as f:
            for row in csv.DictReader(f):
                step, seed = int(row.pop("step")), row.pop("seed")
                for key, value in row.items():
                    if value not in ("", None):
                        scalars[step][f"train/{key}/seed{seed}"] = float(value)
    if (run_dir / "eval.csv").exists():
        with open(run_dir / "eval.csv") as f:
            by_step = defaultdict(list)
            for row in csv.DictReader(f):
                step = int(row["step"])
                scalars[step][f"eval/success/seed{row['seed']}"] = float(row["success"])
                by_step[step].append(float(row["success"]))
            for step, values in by_step.items():
                scalars[step]["eval/mean"] = sum(values) / len(values)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    info = json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").exists() else {}
    return {"scalars": dict(sorted(scalars.items())),
            "config": {**config, "commit": info.get("commit"), "versions": info.get("versions"),
                       "device": info.get("device")}}


def export_tensorboard(run_dir: Path, record: dict, group: str, name: str) -> Path:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logdir = Path(run_dir) / "tensorboard"
    shutil.rmtree(logdir, ignore_errors=True)
    writer = EventFileWriter(str(logdir))
    try:
        meta = {"unit": name, "sweep": group, **record["config"]}
        writer.add_event(event_pb2.Event(step=0, summary=text_pb("config", json.dumps(meta, indent=1))))
        for step, values in record["scalars"].items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)
                                                 for tag, v in sorted(values.items())])
            writer.add_event(event_pb2.Event(step=step, summary=summary))
    finally:
        writer.close()
    return logdir


def wandb_id(group: str, name: str) -> str:
    return hashlib.sha1(f"{group}/{name}".encode()).hexdigest()[:16]


def export_wandb(run_dir: Path, record: dict, group: str, name: str) -> Path:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    root = Path(run_dir) / "wandb"
    run_id = wandb_id(group, name)
    for old in root.glob(f"wandb/*-{run_id}"):  # the previous export of this unit
        shutil.rmtree(old, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    run = wandb.init(dir=str(root), project=os.environ.get("WANDB_PROJECT", "steerflow"), group=group,
                     name=name, id=run_id, config={"unit": name, "sweep": group, **record["config"]},
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    try:
        for step, values in record["scalars"].items():
            run.log(values, step=step)
    finally:
        run.finish()
    return Path(run.dir).parent


def export(run_dir: Path, kinds: list[str], group: str, name: str) -> list[Path]:
    """Export a finished unit's record to every tracker of `kinds` (csv: already written)."""
    record = read_record(run_dir)
    done = []
    if "tensorboard" in kinds:
        done.append(export_tensorboard(run_dir, record, group, name))
    if "wandb" in kinds:
        done.append(export_wandb(run_dir, record, group, name))
    return done


def export_in_subprocess(run_dir: Path, kinds: list[str], group: str, name: str) -> str | None:
    """`export` in a child process; returns what went wrong (the unit stays done either way)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "steerflow.tracking", str(run_dir), ",".join(kinds), group, name],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:300]


if __name__ == "__main__":
    import sys

    export(Path(sys.argv[1]), parse_kinds(sys.argv[2]), group=sys.argv[3], name=sys.argv[4])
