"""`steerflow sweep --backend ray`: each unit one Ray task that runs the unit's `steerflow train
--resume` process on whichever node Ray places it.

* resources: the task asks for `--unit-cpus` CPUs and `--unit-gpus` GPUs (a GPU unit vmaps all its
  seeds on its device); Ray sets CUDA_VISIBLE_DEVICES for it;
* cluster: `--address HOST:PORT` (or `auto`) joins a running cluster; without it a local one is
  started with this process's CPUs and stopped at the end;
* retries: a task whose worker or node is lost is re-run up to `--max-retries` times (Ray's
  `max_retries`); the training process dies with its worker (PR_SET_PDEATHSIG), and the re-run
  resumes the unit from its last checkpoint in the run directory. A training run that fails
  (non-zero exit) is not retried: it is reported, as on the local backend;
* the driver records each submission and end in the manifest as it happens. If the driver dies,
  Ray stops its tasks (they are owned by the driver); running the same sweep again skips the done
  units and resumes the partial ones.

Run directories (`--runs-root`) and the dataset cache must be on storage every node sees.
"""

from __future__ import annotations

import os
from pathlib import Path

from steerflow.backends import UnitResources, forwarded_env, require, run_unit_process, unit_env


def ray_unit(out: str, unit, res: UnitResources, env: dict) -> int:
    """The body of a unit's Ray task (`unit`: a `steerflow.sweep.Unit`): the unit's training
    process, in the foreground."""
    return run_unit_process(unit.command(Path(out)), Path(out) / unit.log, unit_env(res, env))


def connect(address: str):
    """ray.init for the driver: join `address`, or start a local cluster on this process's CPUs.
    Returns whether this call started Ray (and so must shut it down)."""
    ray = require("ray", "ray")
    if ray.is_initialized():  # a caller (a notebook, a test) already connected this process
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=len(os.sched_getaffinity(0)), **kwargs)
    return True


def run_ray(out: Path, res: UnitResources, start_progress, address: str = "") -> dict[str, str]:
    """Run the unfinished units on a Ray cluster; returns {id: what went wrong}. `start_progress(how)`
    starts the sweep's `Progress` over the units (a line saying how they run)."""
    res.check()
    ray = require("ray", "ray")
    out = Path(out)
    started = connect(address)
    try:
        cluster = ray.cluster_resources()
        if cluster.get("CPU", 0) < res.cpus or cluster.get("GPU", 0) < res.gpus:
            raise ValueError(f"--unit-cpus {res.cpus} --unit-gpus {res.gpus}: the Ray cluster has "
                             f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs in all; "
                             "no unit could ever be placed")
        progress = start_progress(f"Ray cluster {ray.get_runtime_context().gcs_address}: "
                                  f"{cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
                                  f"{res.cpus:g} CPU, {res.gpus:g} GPU per unit, {res.max_retries} retries")
        task = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=res.max_retries,
                          retry_exceptions=False)(ray_unit)
        env = forwarded_env()
        refs = {}
        try:
            for u in progress.todo:
                refs[task.options(name=u.id).remote(str(out), u, res, env)] = u.id
                progress.started(u.id, event="submitted")
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    uid = refs.pop(ref)
                    try:
                        code = ray.get(ref)
                        progress.finished(uid, f"exit code {code}" if code else None)
                    except ray.exceptions.RayError as err:  # retries used up, or the task could not run
                        progress.finished(uid, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        except BaseException:
            for ref in refs:  # the units' processes die with their workers; checkpoints stay
                ray.cancel(ref, force=True)
            raise
        finally:
            progress.close()
        return progress.failed
    finally:
        if started:
            ray.shutdown()
