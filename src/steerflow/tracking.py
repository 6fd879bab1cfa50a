"""Experiment tracking: `steerflow train --log csv,tensorboard,wandb` streams a run to TensorBoard
and W&B while it trains; `steerflow sweep --log ...` exports each unit when it has ended.

The run directory's CSV files stay the record every run writes (`metrics.csv`: step, seed, losses,
steps/s; `eval.csv` and `evals/step_XXXXXXXX.json`: the evaluations; `config.json`,
`run_info.json`). `Trackers` sends each `metrics.csv` row (`MetricsLog.write`) and each evaluation
record (`_record_eval`, `_record_offline_eval`) to the trackers asked for at the moment it is
written, under the tags of `train_scalars` and `eval_scalars` (the one naming of streaming and
export): `train/<column>/seed<k>` (losses and `steps_per_s`) at each log step and, at each
evaluation, `eval/success/seed<k>` (`eval/val_action_mse/seed<k>` for an imported dataset: alone without
an env, beside success in one), `eval/mean` and, in the online phase, `online/env_steps/seed<k>` (its rows and
evaluations come the same way):

* `tensorboard`: event files in RUN_DIR/tensorboard, flushed after every write (a TensorBoard
  watching the directory sees each row at once); the resolved config, git commit and run name as a
  text summary `config` at the step the process started from;
* `wandb`: a Weights & Biases run in RUN_DIR/wandb, offline unless WANDB_MODE says otherwise (so
  nothing touches the network; `wandb sync RUN_DIR/wandb/wandb/offline-run-*` uploads it later),
  named after the run directory, the config as its config, the same scalars with W&B's step = the
  training step. Each value reaches W&B when it is written; W&B commits a step's history row when
  a later step is logged or the run ends; the offline file is flushed every second.

Resume (`--resume` from a checkpoint at step S, where the CSV record is cut back to S): TensorBoard
keeps the earlier event files and writes a new one that opens with a `SessionLog.START` event at
step S + 1, so that readers (TensorBoard, `EventAccumulator`) drop the earlier files' steps after
the checkpoint (what PyTorch's `SummaryWriter(purge_step=S + 1)` writes). W&B resumes the same run
id, stored in RUN_DIR/wandb/run_id: offline, the previous offline directory is replaced by one
that replays the record up to S and then streams, so one offline run holds each step once; online
(WANDB_MODE=online) the server keeps the steps it has (a resumed run redoes them identically) and
ignores them when logged again. A run from nothing (no checkpoint) starts both afresh, with a new
W&B id. A tracker that lacks the record up to S (a `--from` run, or `--log` added on resume) gets
it replayed first.

`export` writes a finished run's whole record anew the same way: the sweep driver calls it in a
child process (`python -m steerflow.tracking`; W&B patches process-wide state a driver must keep)
when a unit ends, one tracker run per unit grouped by the sweep's name. Sweep units are exported,
not streamed: a unit's command, its manifest record and the Ray/SLURM tasks would have to carry
the trackers and the sweep's group.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
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
    """Fail before any work when a tracker asked for is not installed."""
    import importlib

    for kind, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if kind in kinds:
            try:
                importlib.import_module(module)
            except ImportError:
                raise ValueError(f"--log {kind} needs the `{module}` package: pip install -e '.[tracking]'") from None


def train_scalars(row: dict) -> dict[str, float]:
    """The tags of one `metrics.csv` row (as written, or as read back): `train/<column>/seed<k>`."""
    return {f"train/{key}/seed{row['seed']}": float(value) for key, value in row.items()
            if key not in ("step", "seed") and value not in ("", None)}


def eval_scalars(record: dict) -> dict[str, float]:
    """The tags of one evaluation record (`evals/step_XXXXXXXX.json`)."""
    metric, seeds = record.get("metric", "success"), record["seeds"]
    scalars = {f"eval/{metric}/seed{s}": float(v) for s, v in zip(seeds, record[metric])}
    if metric != "val_action_mse" and "val_action_mse" in record:  # imported demos in an env: both
        scalars.update({f"eval/val_action_mse/seed{s}": float(v) for s, v in zip(seeds, record["val_action_mse"])})
    scalars["eval/mean"] = float(record["mean"])
    scalars.update({f"online/env_steps/seed{s}": float(n) for s, n in zip(seeds, record.get("env_steps") or [])})
    return scalars


def read_record(run_dir: Path, up_to: int | None = None) -> dict:
    """The run directory's record up to step `up_to` (all of it: None):
    {"scalars": {step: {tag: value}}, "config": {...}}."""
    run_dir = Path(run_dir)
    scalars: dict[int, dict[str, float]] = defaultdict(dict)
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv") as f:
            for row in csv.DictReader(f):
                scalars[int(row["step"])].update(train_scalars(row))
    for path in (run_dir / "evals").glob("step_*.json"):
        record = json.loads(path.read_text())
        scalars[int(record["step"])].update(eval_scalars(record))
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    info = json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").exists() else {}
    return {"scalars": {s: v for s, v in sorted(scalars.items()) if up_to is None or s <= up_to},
            "config": {**config, "commit": info.get("commit"), "versions": info.get("versions"),
                       "device": info.get("device")}}


class _TensorBoard:
    """Event files in `logdir`, flushed after every write."""

    def __init__(self, logdir: Path, meta: dict, step: int | None, record: dict):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if not step:  # a run from nothing, or the whole record (`export`): written anew
            shutil.rmtree(logdir, ignore_errors=True)
        earlier = any(logdir.glob("events.out.tfevents.*"))
        self.writer = EventFileWriter(str(logdir))
        if earlier:  # resumed from step: readers drop the earlier files' steps after it
            self.writer.add_event(event_pb2.Event(step=step + 1, session_log=event_pb2.SessionLog(
                status=event_pb2.SessionLog.START)))
        else:
            for s, values in record["scalars"].items():
                self.log(s, values)
        self.writer.add_event(event_pb2.Event(step=step if earlier else 0,
                                              summary=text_pb("config", json.dumps(meta, indent=1))))
        self.writer.flush()

    def log(self, step: int, scalars: dict) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)
                                             for tag, v in sorted(scalars.items())])
        self.writer.add_event(event_pb2.Event(step=step, summary=summary))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """A W&B run in RUN_DIR/wandb with the id stored in RUN_DIR/wandb/run_id."""

    def __init__(self, run_dir: Path, meta: dict, step: int | None, record: dict, name: str, group: str | None):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        root = Path(run_dir) / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "run_id"
        stored = id_file.read_text().strip() if id_file.exists() else None
        run_id = stored if stored and step != 0 else secrets.token_hex(8)  # a run from nothing: a new one
        id_file.write_text(run_id)
        offline = os.environ["WANDB_MODE"] == "offline"
        if offline:  # the previous offline record: replaced by the replay below
            for old in root.glob("wandb/offline-run-*"):
                shutil.rmtree(old, ignore_errors=True)
        self.run = wandb.init(dir=str(root), project=os.environ.get("WANDB_PROJECT", "steerflow"), group=group,
                              name=name, id=run_id, resume="allow", config=meta,
                              settings=wandb.Settings(console="off", x_disable_stats=True,
                                                      x_transaction_log_flush_interval=1.0))
        if offline or run_id != stored or step is None:  # online, a resumed run keeps what it has
            for s, values in record["scalars"].items():
                self.log(s, values)

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of `kinds` (csv: written by the run itself) for the run in `run_dir`, which
    starts from `step` (its record up to there is written; None: all of it, as `export` does).
    `train` and `evaluation` send a record as it is written; `close` when the run stops."""

    def __init__(self, run_dir: Path, kinds, step: int | None = 0, name: str | None = None,
                 group: str | None = None):
        run_dir = Path(run_dir)
        self.sinks = []
        kinds = set(kinds) - {"csv"}
        if not kinds:
            return
        record = read_record(run_dir, up_to=step)
        name = name or run_dir.name
        meta = {**record["config"], "name": name, **({"group": group} if group else {})}
        try:
            if "tensorboard" in kinds:
                self.sinks.append(_TensorBoard(run_dir / "tensorboard", meta, step, record))
            if "wandb" in kinds:
                self.sinks.append(_Wandb(run_dir, meta, step, record, name, group))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, scalars: dict) -> None:
        for sink in self.sinks:
            sink.log(step, scalars)

    def train(self, step: int, rows: list[dict]) -> None:
        """The `metrics.csv` rows of one log step (one per seed)."""
        if self.sinks:
            self.log(step, {tag: v for row in rows for tag, v in train_scalars(row).items()})

    def evaluation(self, record: dict) -> None:
        if self.sinks:
            self.log(record["step"], eval_scalars(record))

    def close(self) -> None:
        while self.sinks:
            self.sinks.pop().close()


def export(run_dir: Path, kinds: list[str], group: str, name: str) -> list[Path]:
    """Write a run's whole record anew to every tracker of `kinds` (csv: already written)."""
    run_dir = Path(run_dir)
    Trackers(run_dir, kinds, step=None, name=name, group=group).close()
    return [run_dir / k for k in ("tensorboard", "wandb") if k in kinds]


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
