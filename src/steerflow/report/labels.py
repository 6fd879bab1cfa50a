"""Names in a report: a task's domain and short name (split by `steerflow.data.tasks`), method
labels (agent + overrides), and the formatting of values, ranges and file names."""

from __future__ import annotations

import re

from steerflow.data.tasks import parse_task, split_task


def task_domain(task: str) -> str:
    """`cube-single-task2` → `cube-single`, `scene-task1-sparse` → `scene-sparse` (as `parse_task`
    reads the name; unknown domains are split the same way)."""
    try:
        spec = parse_task(task)
        return spec.domain + ("-sparse" if spec.sparse else "")
    except ValueError:
        parts = split_task(task)
        return parts.domain + parts.suffix if parts else task


def task_number(task: str) -> int:
    """N of `DOMAIN-taskN[-...]`; 0 for a name of another form."""
    parts = split_task(task)
    return parts.number if parts else 0


def task_key(task: str):
    """Sort key: domain, then task number."""
    return (task_domain(task), task_number(task), task)


def short_task(task: str) -> str:
    """`cube-single-task2` → `task2` (the digits as written); another form is kept whole."""
    parts = split_task(task)
    return task[len(parts.domain) + 1:len(task) - len(parts.suffix)] if parts else task


def fmt_value(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def method_labels(runs: list) -> list[str]:
    """Label per seed run: agent (+ ` [reference]` for a reference implementation's run) + its
    non-empty overrides, + preset when the runs mix presets, + steps when one such method was
    trained for different step counts."""
    mix_presets = len({r.preset for r in runs}) > 1
    base = [r.agent + (f" [{r.impl}]" if r.impl != "steerflow" else "")
            + "".join(f" {k}={fmt_value(v)}" for k, v in sorted(r.overrides.items()))
            + (f" preset={r.preset}" if mix_presets else "") for r in runs]
    steps_of: dict[str, set] = {}
    for b, r in zip(base, runs):
        steps_of.setdefault(b, set()).add(r.steps)
    return [b + (f" steps={r.steps}" if len(steps_of[b]) > 1 else "") for b, r in zip(base, runs)]


def one(values, join: str = "; "):
    """The single value, or all of them joined."""
    uniq = sorted({str(v) for v in values})
    return uniq[0] if len(uniq) == 1 else join.join(uniq)


def value_range(values) -> str:
    """`3`, or `2–5` when the values differ."""
    values = sorted(set(values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def safe_name(name: str) -> str:
    """`name` as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
