"""Where a sweep's units run: `local` (this machine's process pool, `steerflow.sweep.run_units`),
`ray` (one Ray task per unit, `backends.ray_cluster`) and `slurm` (one submitit job array per sweep,
`backends.slurm`); `steerflow.sweep.run_backend` picks one. Every backend runs the same thing for a
unit: its `steerflow train ... --resume` command (`Unit.command`) into its own run directory, so a
unit that is retried, requeued or re-run after its driver died continues from its last checkpoint,
and a finished one is skipped. The engines import nothing of `steerflow.sweep`: they get the units
(pickled to the nodes) and a factory of the sweep's `Progress`.

A unit's declared resources (`UnitResources`) are what the engine schedules on; the training
process sees them as its environment: one XLA CPU thread for a 1-CPU unit, and no GPU (JAX on the
CPU) for a unit that declared none, so that it cannot take a device the scheduler gave to another.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("local", "ray", "slurm")
# forwarded from the driver to every unit: where the datasets are cached (nodes share it or
# generate their own copy; generation is safe to race)
FORWARDED_ENV = ("STEERFLOW_DATA",)


@dataclass(frozen=True)
class UnitResources:
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 3  # ray: re-runs after the loss of a unit's worker or node (not after a failed run)
    timeout_min: int = 24 * 60  # slurm: time limit per job (a requeued job continues from its checkpoint)
    partition: str = ""
    mem_gb: float = 0.0  # slurm: 0 = the partition's default

    def check(self) -> None:
        if self.cpus <= 0:
            raise ValueError(f"--unit-cpus {self.cpus}: expected more than 0")
        if self.gpus < 0:
            raise ValueError(f"--unit-gpus {self.gpus}: expected 0 or more")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries {self.max_retries}: expected 0 or more")
        if self.timeout_min < 1:
            raise ValueError(f"--timeout-min {self.timeout_min}: expected at least 1")


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def unit_env(res: UnitResources, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The training process's environment on the node that runs it, from its declared resources."""
    from steerflow.train import single_thread_env

    env = single_thread_env() if res.cpus <= 1 and not res.gpus else dict(os.environ)
    env.update(extra or {})
    if not res.gpus:
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _die_with_parent():
    """preexec_fn that SIGKILLs the child when the process that started it dies (Linux prctl
    PR_SET_PDEATHSIG): a lost Ray worker or a killed job must not leave a training process writing
    into the run directory that the retry resumes. libc is loaded before the fork."""
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: the child outlives a killed parent
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def run_unit_process(cmd: list[str], log: Path, env: dict[str, str], on_start=None) -> int:
    """Run one unit's training command in the foreground, its output appended to `log`; returns
    its exit code. `on_start(proc)` sees the process (for forwarding a preemption signal)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as logf:
        logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} {shlex.join(map(str, cmd))}\n".encode())
        logf.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent())
        if on_start:
            on_start(proc)
        return proc.wait()


def require(module: str, extra: str):
    """Import an optional engine, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"--backend {extra} needs the `{module}` package: pip install -e '.[{extra}]' "
                         f"({err})") from None
