"""`steerflow sweep --backend slurm`: one SLURM job array per sweep through submitit, one array task
per unfinished unit, each running the unit's `steerflow train --resume` process.

* resources per unit: `--unit-cpus` (cpus_per_task), `--unit-gpus` (gpus_per_node), `--timeout-min`,
  `--partition`, `--mem-gb`; `slurm_array_parallelism` leaves the throttling to SLURM;
* preemption and time-outs: SLURM signals the job (USR2, submitit's default), submitit calls
  `UnitJob.checkpoint`, which stops the training process with SIGTERM (it saves a checkpoint at its
  current step and exits) and hands submitit the same call to requeue; the requeued job resumes the
  unit from that checkpoint;
* the driver waits for the array and records each unit's end in the manifest as it comes. Jobs
  outlive a dead driver: wait for them (`squeue`) or cancel them (`scancel`) before running the
  sweep again, which then skips the done units and resumes the partial ones.

submitit's job folder (scripts, pickles, job logs) is `--runs-root`/submitit (or OUT/submitit);
like the run directories it must be on storage the nodes share. `--slurm-cluster local` runs the
same array with submitit's LocalExecutor on this machine (how it is tested; there is no SLURM here).
"""

from __future__ import annotations

import signal
from pathlib import Path

from steerflow.backends import UnitResources, forwarded_env, require, run_unit_process, unit_env


def _checkpointable():
    return require("submitit", "slurm").helpers.Checkpointable


class UnitJob(_checkpointable()):
    """The callable of one array task: trains one unit; requeued with the same arguments when
    preempted or timed out, after the training process has checkpointed."""

    def __init__(self):
        self.proc = None

    def __call__(self, out: str, unit, res: UnitResources, env: dict) -> int:
        return run_unit_process(unit.command(Path(out)), Path(out) / unit.log, unit_env(res, env),
                                on_start=lambda proc: setattr(self, "proc", proc))

    def checkpoint(self, *args, **kwargs):
        import submitit

        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `steerflow train` stops after its host call, checkpointed
            try:
                proc.wait(timeout=120)
            except Exception:  # noqa: BLE001 - past the grace period the last periodic checkpoint stays
                proc.kill()
        return submitit.helpers.DelayedSubmission(UnitJob(), *args, **kwargs)  # a fresh one: no process handle

    def __getstate__(self):
        return {"proc": None}  # a Popen does not pickle; the requeued call starts its own process


def executor(folder: Path, res: UnitResources, cluster: str = "slurm", parallelism: int | None = None):
    submitit = require("submitit", "slurm")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = dict(timeout_min=res.timeout_min, cpus_per_task=max(1, int(round(res.cpus))), tasks_per_node=1,
                  nodes=1, slurm_array_parallelism=parallelism or 256)
    if res.gpus:
        params["gpus_per_node"] = int(res.gpus)
    if res.partition:
        params["slurm_partition"] = res.partition
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    if cluster == "local":  # the local executor knows only the generic parameters
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    ex.update_parameters(**params)
    return ex


def submit(out: Path, units, res: UnitResources, cluster: str = "slurm"):
    """Submit `units` as one job array; returns the submitit jobs, in the order of `units`."""
    out = Path(out)
    root = Path(units[0].run_dir).parent if units and units[0].runs_root else out
    ex = executor(root / "submitit", res, cluster)
    env = forwarded_env()
    calls = [(str(out), u, res, env) for u in units]
    return ex.map_array(UnitJob(), *zip(*calls)) if calls else []


def run_slurm(out: Path, res: UnitResources, start_progress, cluster: str = "slurm") -> dict[str, str]:
    """Run the unfinished units as one job array; returns {id: what went wrong}. `start_progress(how)`
    starts the sweep's `Progress` over the units (a line saying how they run)."""
    res.check()
    submitit = require("submitit", "slurm")
    out = Path(out)
    progress = start_progress(f"one job array; {res.cpus:g} CPU, {res.gpus:g} GPU, {res.timeout_min} min per unit")
    try:
        jobs = submit(out, progress.todo, res, cluster)
        by_job = {}
        for unit, job in zip(progress.todo, jobs):
            by_job[job.job_id] = unit.id
            progress.started(unit.id, where=f"  job {job.job_id}", event="submitted")
        for job in submitit.helpers.as_completed(jobs):
            uid = by_job[job.job_id]
            try:
                code = job.result()
                progress.finished(uid, f"exit code {code}" if code else None)
            except Exception as err:  # noqa: BLE001 - a job that died: submitit names why
                progress.finished(uid, f"job {job.job_id}: {type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}")
    finally:
        progress.close()
    return progress.failed
