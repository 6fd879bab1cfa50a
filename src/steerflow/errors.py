"""What a `steerflow` command can end with, besides success, and how the CLI reports each.

    ValueError, FileNotFoundError, FileExistsError   bad input (flag, config value, data file): exit 2
    Busy (a FileExistsError)                         the directory is being written by another process
                                                     (`steerflow.runlock`), named with its pid: exit 2
    OSError (permission, read-only, disk full)       the environment: one line naming path and cause, exit 1
    RunFailed (TrainingDiverged, a failed seed)      the run itself failed: exit 1
    Interrupted / KeyboardInterrupt                  SIGINT: exit 130, SIGTERM: exit 143

Signals: `raising_signals()` turns SIGTERM into an exception like Ctrl-C's, so every cleanup path
(`finally`, temporary directories) runs for both; `deferred_signals()` only records a signal, so
the training loop can stop at the end of its current host call with a checkpoint at that step.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading


class DataError(ValueError):
    """A file that cannot be imported; the message names the file, demo, key and what is wrong."""


class EvalStopped(Exception):
    """A signal arrived during an in-training evaluation (or its video): the evaluation stops."""


class Busy(FileExistsError):
    """Another live process owns the directory this command would write (`steerflow.runlock`)."""


class RunFailed(RuntimeError):
    """A run that started and failed (exit 1), with a message for the user."""


class TrainingDiverged(RunFailed):
    """Losses became non-finite; the last good checkpoint is kept and the run is marked failed."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM. `step`/`run_dir`: where an interrupted training run left its checkpoint."""

    def __init__(self, signum=signal.SIGINT, step: int | None = None, total: int | None = None, run_dir=None):
        if not isinstance(signum, int):  # re-created from its message by C code (mujoco's XML parser does)
            signum = signal.SIGTERM if "SIGTERM" in str(signum) else signal.SIGINT
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.total, self.run_dir = signum, step, total, run_dir

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(err: BaseException) -> int:
    return err.exit_code if isinstance(err, Interrupted) else 130


def describe_os_error(err: OSError) -> str:
    """One line naming the path and the cause, e.g. `cannot write /x/y: No space left on device`."""
    if err.filename is None or not err.strerror:
        return str(err)
    verb = "write" if err.errno in (errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT) else "use"
    return f"cannot {verb} {err.filename}: {err.strerror}"


@contextlib.contextmanager
def naming(path):
    """An OSError raised inside without a path (a full disk inside `write`) names `path`."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def raising_signals():
    """SIGTERM raises `Interrupted` (as SIGINT raises KeyboardInterrupt), restored on exit."""
    if not _in_main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def children_ignore_sigint():
    """Start worker processes inside this: they inherit SIGINT ignored from their first instruction
    (a terminal's Ctrl-C reaches the whole process group; only the parent should act on it, and a
    worker still importing would otherwise print a traceback)."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deferred_signals():
    """Record SIGINT/SIGTERM in the yielded list instead of raising; a second one raises at once."""
    received: list[int] = []
    if not _in_main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise Interrupted(signum)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
