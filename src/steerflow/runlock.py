"""One writer at a time for a directory, and no leftovers of killed writers.

A directory a command writes (a run directory, a dataset cache entry, an export target) is owned
by one process at a time. `hold(lock_file)` takes an advisory `fcntl.flock` on `lock_file` and
writes its holder into it (`{"pid": 1234, "command": "steerflow train ..."}`); a second writer
gets `Busy` (exit 2) naming that pid and command, or, with `wait=True`, waits for it;
`held_by(lock_file)` tells a reader who holds it, without taking it. The kernel
releases a flock when its process ends, however it ends, so a lock file left by a killed process
is held by nobody: it is stale, and the next writer takes it over. A released lock file is removed.

Temporary files: `scratch(parent, name)` is a directory `.tmp-NAME-PID@HOST.XXXXXXXX` unique to
its writer, removed on failure; `replace_dir` renames it into place. `remove_stale(parent)`
removes the scratch directories of this machine's processes that are gone and the lock files
nobody holds, saying so in one line on stderr; `remove_partial_files` the half-written `*.tmp`
files of atomic writes in a directory the caller owns (a run directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from steerflow.errors import Busy, naming

# `.tmp-NAME-PID@HOST.XXXXXXXX`, and `.tmp-NAME-PID` as older versions named them
_SCRATCH = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)(?:@(?P<host>.+?))?(?:\.[a-z0-9_]{8})?$")
_HOST = socket.gethostname()


def sibling_lock(path: Path) -> Path:
    """The lock file of a directory that is replaced as a whole (a cache entry, an export): `.NAME.lock` beside it."""
    return path.parent / f".{path.name}.lock"


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("steerflow", "cli.py", "__main__.py"):
        argv[0] = "steerflow"
    return shlex.join(argv)


def holder(lock_file: Path) -> dict:
    """What a lock file says about its holder ({} when unreadable or still empty)."""
    for _ in range(50):  # the holder writes it right after taking the lock
        try:
            return json.loads(lock_file.read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
    return {}


def describe(info: dict) -> str:
    host = f" on {info['host']}" if info.get("host", _HOST) != _HOST else ""
    return f"process {info.get('pid', '?')}{host} ({info.get('command', 'command unknown')})"


def _open_locked(lock_file: Path, blocking: bool) -> int | None:
    """An fd holding the flock of `lock_file`, or None when another process holds it (not blocking)."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder may have removed the file between our open and our flock
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def hold(lock_file: Path, what: str, hint: str = "", wait: bool = False, on_wait=None):
    """Own `what` (e.g. "run directory runs/x") while inside: refuse with `Busy` naming the
    holder, or with `wait` call `on_wait(holder description)` and wait for it."""
    lock_file = Path(lock_file)
    fd = _open_locked(lock_file, blocking=False)
    if fd is None:
        other = describe(holder(lock_file))
        if not wait:
            raise Busy(f"{what} is being written by {other}; wait for it to finish or stop it"
                       + (f", or {hint}" if hint else ""))
        if on_wait is not None:
            on_wait(other)
        fd = _open_locked(lock_file, blocking=True)
    try:
        with naming(lock_file):
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps({"pid": os.getpid(), "host": _HOST, "command": _command(),
                                      "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n").encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):  # its directory may be gone (a failed run removed)
            lock_file.unlink()
        os.close(fd)


def held_by(lock_file: Path) -> dict | None:
    """What `lock_file` says of its holder ({} if it has not written it yet) while a process holds it;
    None when nobody does (no file, or a stale one, which is left for the next writer to take over)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(lock_file)
    finally:
        os.close(fd)  # releases the shared lock, if it was taken
    return None


def run_dir_holder(run_dir: Path) -> dict | None:
    """The live process training into `run_dir` (`held_by` of its lock), or None: the lock
    `steerflow train` holds inside it, or the one beside it that a process holds while it builds
    the directory elsewhere and renames it into place (benchmarks/parity/run_reference.py)."""
    for lock in (Path(run_dir) / ".lock", sibling_lock(Path(run_dir))):
        info = held_by(lock)
        if info is not None:
            return info
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _scratch_prefix(name: str) -> str:
    return f".tmp-{name}-{os.getpid()}@{_HOST}."


@contextlib.contextmanager
def scratch(parent: Path, name: str):
    """A new directory `.tmp-NAME-PID@HOST.XXXXXXXX` in `parent`; removed on the way out unless it was renamed."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=_scratch_prefix(name)))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is first renamed aside and then removed, so
    `final` is never a mix of the old and the new."""
    if not final.exists():
        os.replace(tmp, final)
        return
    aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=_scratch_prefix(final.name)))
    os.replace(final, aside)  # rename(2) replaces an empty directory
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _free_lock(lock_file: Path) -> bool:
    """Remove a lock file nobody holds; False when it is held."""
    try:
        fd = _open_locked(lock_file, blocking=False)
    except OSError:
        return False
    if fd is None:
        return False
    lock_file.unlink(missing_ok=True)
    os.close(fd)
    return True


def remove_stale(parent: Path, name: str | None = None) -> list[Path]:
    """Remove the scratch directories in `parent` (of `name` only, when given) whose process is
    gone, and the lock files nobody holds; one line on stderr when there were any."""
    removed, size = [], 0.0
    if not parent.is_dir():
        return removed
    for p in sorted(parent.glob(".tmp-*")):
        m = _SCRATCH.match(p.name)
        if not m or not p.is_dir() or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if m["host"] not in (None, _HOST) or pid == os.getpid() or pid_alive(pid):
            continue  # another machine's (a shared file system), or still being written
        size += _size_mb(p)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for lock in sorted(parent.glob(f".{name}.lock" if name is not None else ".*.lock")):
        if _free_lock(lock):
            removed.append(lock)
    _say_removed(parent, removed, size)
    return removed


def remove_partial_files(owned: Path, *subdirs: str) -> list[Path]:
    """Remove the `*.tmp` files of atomic writes a killed process left in directory `owned` (and
    its `subdirs`), which the caller holds the lock of; one line on stderr when there were any."""
    removed = [p for d in (owned, *(owned / s for s in subdirs)) if d.is_dir() for p in sorted(d.glob("*.tmp"))
               if p.is_file()]
    size = sum(p.stat().st_size for p in removed) / 2**20
    for p in removed:
        p.unlink(missing_ok=True)
    _say_removed(owned, removed, size)
    return removed


def _say_removed(parent: Path, removed: list[Path], size_mb: float) -> None:
    if removed:
        print(f"steerflow: removed {len(removed)} leftover(s) of killed processes in {parent} ({size_mb:.1f} MB): "
              + ", ".join(str(p.relative_to(parent)) for p in removed), file=sys.stderr, flush=True)
