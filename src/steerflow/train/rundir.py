"""A run directory as the training program sees it (`train.loop`): its rows of the program's
vmapped axis, its files, metrics log, trackers, evaluation env pool and records.

A single-task run is one `RunDir` that owns every row. A multi-task run (`--task
cube-single-task1,cube-single-task3`: tasks of one domain, trained as one jitted program over
task × seed, `data.chunks.stack_tasks`) is a parent directory holding the program's checkpoint
(`checkpoints/latest.msgpack`, every row; `--resume` reads it) and `tasks.json`, with one child
run directory per task, `OUT/<task>/`, that reads like a single-task run to `report`, `eval` and
`export` (its own config.json, eval.csv, final.json and a checkpoint of its own rows).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .evaluation import _record_eval, drop_evals_after
from .metrics import MetricsLog
from .presets import RunSpec, check_run, task_list


@dataclasses.dataclass
class RunDir:
    out: Path
    run: RunSpec
    task: object  # where it is evaluated: `data.tasks.TaskSpec`, `envs.gym_env.GymEnvSpec` or None (offline metric)
    rows: slice  # its rows of the program's vmapped axis: slice(None) when it owns them all
    record: dict | None = None  # its last evaluation
    trackers: object = None  # `steerflow.tracking.Trackers`
    log: MetricsLog | None = None
    pool: object = None  # `steerflow.envs.pool.EnvPool` of its task

    @property
    def seeds(self) -> list[int]:
        return list(self.run.seeds)

    def take(self, tree):
        """Its rows of a pytree whose leaves lead with the program's vmapped axis."""
        if self.rows == slice(None):
            return tree
        import jax

        return jax.tree.map(lambda a: a[self.rows], tree)

    def write_files(self, config, tc, norm, layout, data_info: dict) -> None:
        """Normalisation and image layout (what evaluation and `policy.load` apply), config.json and
        run_info.json, written after the checkpoint was read (a bad one leaves the run as it was)."""
        from steerflow.config import to_dict
        from steerflow.data import normalization
        from steerflow.encoders import save_layout
        from steerflow.runinfo import atomic_write_json, device_description, git_commit, library_versions

        self.out.mkdir(parents=True, exist_ok=True)
        normalization.save(self.out, norm)
        save_layout(self.out, layout)
        atomic_write_json(self.out / "config.json", {"run": dataclasses.asdict(self.run), "agent_config": to_dict(config),
                                                     "train_config": to_dict(tc)})
        atomic_write_json(self.out / "run_info.json", {
            "commit": git_commit(), "versions": library_versions(), "device": device_description(),
            "dataset": data_info, "command": " ".join(sys.argv)})

    def open(self, step: int, kinds, tc) -> None:
        """Its trackers, metrics log and env pool; records after `step` (a resumed checkpoint) dropped."""
        from steerflow.envs.pool import EnvPool
        from steerflow.tracking import Trackers

        self.trackers = Trackers(self.out, kinds, step)  # `--log`: fed each record as it is written
        self.log = MetricsLog(self.out / "metrics.csv", step, self.trackers)
        drop_evals_after(self.out, step)  # evaluations after the checkpoint are redone, identically
        (self.out / "failed.json").unlink(missing_ok=True)  # a resumed run starts over from its last good checkpoint
        if self.task is not None:
            self.pool = EnvPool(self.task, min(tc.eval_episodes, tc.eval_envs), tc.eval_workers)

    def record_success(self, step: int, success, final_reward, eval_s: float, env_steps=None, val_action_mse=None) -> dict:
        self.record = _record_eval(self.out, step, self.seeds, success, self.run, eval_s=eval_s, env_steps=env_steps,
                                   final_reward=final_reward, trackers=self.trackers, val_action_mse=val_action_mse)
        return self.record

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
        if self.pool is not None:
            self.pool.close()


def members(run: RunSpec, out: Path) -> list[tuple[RunSpec, Path]]:
    """(run, directory) of each task: the run itself in `out`, or each task's in `out/<task>`."""
    tasks = task_list(run.task)
    if len(tasks) == 1:
        return [(run, out)]
    check_run(run)  # the tasks, and the settings a multi-task run cannot take
    return [(dataclasses.replace(run, task=t), out / t) for t in tasks]
