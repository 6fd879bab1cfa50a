"""`metrics.csv`: step, seed, losses, steps/s (one row per seed per log point); a resumed run
drops the rows written after its checkpoint. Each log point's rows go to the run's trackers
(`steerflow.tracking.Trackers`, `--log`) as they are written."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, resume_step: int, trackers=None):
        self.path, self.trackers = path, trackers  # trackers: `steerflow.tracking.Trackers`
        self.fields: list[str] | None = None
        if resume_step and path.exists():  # drop rows written after the checkpoint we resume from
            with open(path) as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                self._rewrite(keep)
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows):
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, seeds: list[int], metrics: dict, steps_per_s: float) -> None:
        names = sorted(metrics)
        if self.fields is None:
            self.fields = ["step", "seed", "steps_per_s", *names]
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore", lineterminator="\n")
            if f.tell() == 0:
                writer.writeheader()
            rows = [{"step": step, "seed": seed, "steps_per_s": round(steps_per_s, 2),
                     **{k: float(metrics[k][i]) for k in names if k in self.fields}} for i, seed in enumerate(seeds)]
            writer.writerows(rows)
        if self.trackers is not None:
            self.trackers.train(step, rows)
