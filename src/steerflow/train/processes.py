"""Training processes: the `steerflow train` command of a run, one single-threaded process per
seed pinned to a core, and `run_commands`, the runner that sweeps share."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .presets import RunSpec, _fmt


SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def single_thread_env() -> dict[str, str]:
    """Environment of one of several training processes sharing this machine: one CPU thread each
    (measured faster than sharing the threads on the 2-core CPU) and no up-front GPU allocation."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA_FLAGS}".strip()
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def _env_flags(run: RunSpec) -> list[str]:
    """`--env ...` or `--eval-task TASK` (or nothing: scored offline) of an imported-dataset run."""
    from steerflow.data.imports import DATASET_PREFIX

    if run.env:
        env = run.env
        return ["--env", env["factory"], *(["--env-set", *(f"{k}={json.dumps(v)}" for k, v in env["kwargs"].items())]
                                             if env.get("kwargs") else []),
                *(["--max-episode-steps", str(env["max_episode_steps"])] if env.get("max_episode_steps") else []),
                *(["--success", env["success"]] if env.get("success") else [])]
    return [] if run.task.startswith(DATASET_PREFIX) else ["--eval-task", run.task]


def train_command(run: RunSpec, out: Path, resume: bool = False, log=("csv",)) -> list[str]:
    """argv of the `steerflow train` process that trains all of `run`'s seeds, vmapped, into `out`
    (`log`: its trackers, `--log`)."""
    if run.dataset:  # `task` is the evaluation env (`--eval-task`), or the offline metric's placeholder
        where = ["--dataset", run.dataset, *(["--reward", run.reward] if run.reward else []),
                 *_env_flags(run)]
    else:
        where = ["--task", run.task]
    cmd = [sys.executable, "-m", "steerflow.cli", "train", "--agent", run.agent, *where,
           "--seeds", ",".join(map(str, run.seeds)), "--preset", run.preset, "--out", str(out),
           "--parallel", "vmap", *(["--resume"] if resume else []),
           *(["--base-from", run.base_from] if run.base_from else []),
           *(["--from", run.from_run] if run.from_run else []),
           *(["--log", ",".join(log)] if set(log) - {"csv"} else [])]
    # one flag with every value: a repeated `--set` flag would keep only its last value
    if run.overrides:
        cmd += ["--set", *(f"{k}={_fmt(v)}" for k, v in run.overrides.items())]
    if run.train_overrides:
        cmd += ["--train-set", *(f"{k}={_fmt(v)}" for k, v in run.train_overrides.items())]
    return cmd


def free_core(busy: set[int]) -> int | None:
    """A CPU of this process's affinity set not in `busy` (None when all are taken)."""
    return next((c for c in sorted(os.sched_getaffinity(0)) if c not in busy), None)


def pinned_to(core: int | None):
    """preexec_fn pinning a child process to one CPU. Single-threaded processes sharing this 2-core
    machine unpinned lose ~20% of the total throughput to migrations (benchmarks/protocol/README.md)."""
    return None if core is None else (lambda: os.sched_setaffinity(0, {core}))


def run_commands(jobs, max_procs: int, env: dict | None = None, on_start=None, on_finish=None,
                 poll_s: float = 0.5, grace_s: float = 20.0, pin: bool = False) -> dict:
    """Run `jobs`, (name, argv, log path) triples, at most `max_procs` at a time, each one's stdout
    and stderr appended to its log; returns {name: exit code}. With `pin`, each process is bound
    to a CPU of its own while fewer run than there are CPUs. `on_start(name, argv, log)` and
    `on_finish(name, code)` are called as they start and end. On Ctrl-C (or SIGTERM) every running
    child's process group gets SIGINT, so it stops as an interrupted `steerflow train` does (its
    last checkpoint stays for --resume), SIGKILL after `grace_s`; then the interrupt propagates."""
    import shlex
    import signal
    import threading

    pending, running, codes = list(jobs), [], {}
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while pending or running:
            while pending and len(running) < max_procs:
                name, cmd, log = pending.pop(0)
                Path(log).parent.mkdir(parents=True, exist_ok=True)
                logf = open(log, "ab")
                logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(map(str, cmd))}\n".encode())
                logf.flush()
                if on_start:
                    on_start(name, cmd, log)
                # own process group: a terminal Ctrl-C reaches only this runner, which stops each
                # child together with its env workers below
                core = free_core({c for *_, c in running}) if pin else None
                proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=pinned_to(core))
                running.append((name, proc, logf, core))
            time.sleep(poll_s)
            for item in list(running):
                name, proc, logf, _ = item
                if proc.poll() is not None:
                    running.remove(item)
                    logf.close()
                    codes[name] = proc.returncode
                    if on_finish:
                        on_finish(name, proc.returncode)
    except BaseException:
        _stop_children(running, grace_s)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return codes


def _stop_children(running, grace_s: float) -> None:
    import signal

    def signal_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    for _, proc, _, _ in running:
        signal_group(proc, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for _, proc, logf, _ in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
        logf.close()


def train_processes(run: RunSpec, out: Path, resume: bool = False, max_procs: int | None = None,
                    log=("csv",)) -> dict:
    """One single-threaded process per seed (at most one per core), each with the trackers `log`
    in its `seed_k/` run directory; results gathered afterwards."""
    from steerflow.runlock import remove_partial_files

    from .loop import make_run_dir, run_lock

    out = Path(out)
    make_run_dir(out)
    with run_lock(out):  # each seed's process owns its seed_k/ in turn
        remove_partial_files(out)
        return _train_processes(run, out, resume, max_procs, log)


def _train_processes(run: RunSpec, out: Path, resume: bool, max_procs: int | None, log) -> dict:
    jobs = [(seed, train_command(dataclasses.replace(run, seeds=[seed]), out / f"seed_{seed}", resume, log),
             out / f"seed_{seed}.log") for seed in run.seeds]
    codes = run_commands(
        jobs, max_procs or os.cpu_count() or 1, env=single_thread_env(), pin=True,
        on_start=lambda seed, cmd, log: print(f"[seed {seed}] {' '.join(cmd[2:])}  (log: {log})"),
        on_finish=lambda seed, code: print(f"[seed {seed}] finished with exit code {code}"))
    failed = [seed for seed, code in codes.items() if code != 0]
    if failed:
        from steerflow.errors import RunFailed

        raise RunFailed(f"seeds {failed} failed (exit codes {[codes[s] for s in failed]}); see "
                        + ", ".join(str(out / f"seed_{s}.log") for s in failed))
    return gather_final(run, out)


def gather_final(run: RunSpec, out: Path) -> dict:
    from steerflow.runinfo import atomic_write_json

    finals = [json.loads((out / f"seed_{s}" / "final.json").read_text()) for s in run.seeds]
    metric = "val_action_mse" if finals[0].get("metric") == "val_action_mse" else "final_success"
    per_seed = [f[metric][0] for f in finals]  # an imported dataset without an env is scored offline
    final = {**finals[0], "seeds": list(run.seeds), metric: per_seed, "mean": float(np.mean(per_seed))}
    atomic_write_json(out / "final.json", final)
    return final
