"""Checks of command-line values shared by `steerflow.cli`'s commands and the programmatic
`steerflow.sweep` options: positive counts, seed lists and output directories. Each raises
ValueError naming the flag and the value at fault."""

from __future__ import annotations

from pathlib import Path


def positive(flag: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{flag} {value}: expected a positive integer")


def parse_seed_list(text: str, flag: str = "--seeds") -> list[int]:
    """`0,1,2` → [0, 1, 2]; an empty list, an empty item, a repeat or a non-integer is an error."""
    items = [s.strip() for s in str(text).split(",")]
    if not str(text).strip() or any(not s for s in items):
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers with no empty item, e.g. 0,1,2")
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{flag} {text!r}: seed(s) {repeated} repeated; each seed trains once per run")
    if any(s < 0 for s in seeds):
        raise ValueError(f"{flag} {text!r}: seeds must be non-negative")
    return seeds


def check_out_dir(flag: str, path: Path) -> None:
    """An output path must be a directory or not exist yet."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory (it must be a directory)")
    for parent in path.parents:  # a file on the way (`--out file.txt/run`) fails the same way
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file (it must be a directory)")
            break
