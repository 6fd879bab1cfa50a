"""`steerflow` command line: data generation, training and evaluation.

    steerflow data generate DOMAIN [--episodes N] [--seed S] [--workers W]
    steerflow data info
    steerflow data import robomimic|lerobot|minari PATH --name NAME [--obs-keys K1,K2] [--split S]
    steerflow data demos fetch-pick-and-place|cube-single-taskN --out FILE.hdf5 [--episodes N] [--seed S]
                         [--artifacts all|none|pause,hesitation,correction,jitter,release]
    steerflow data render TASK --name NAME [--episodes N] [--dataset-episodes M] [--episode-steps K]
    steerflow train --agent AGENT --task TASK [--seeds 0,1,2] [--steps N]
    steerflow train --agent AGENT --dataset NAME [--reward given|sparse-success] [--eval-task TASK] ...
    steerflow train --agent AGENT --dataset NAME --env MODULE:FACTORY [--env-set K=V ...]
                    [--max-episode-steps N] [--success KEY|MODULE:FN] ...
                    [--preset smoke|cpu|default|paper] [--out DIR] [--resume] [--base-from RUN_DIR]
                    [--online-steps N [--online-ratio R] [--updates-per-env-step U]]
                    [--log csv,tensorboard,wandb]
    steerflow eval RUN_DIR [--episodes N] [--video N [--video-dir DIR] [--video-steps K]]
    steerflow export RUN_DIR --format onnx|stablehlo --out DIR [--seed-index I]
    steerflow report RUN_DIR_OR_SWEEP... [--out report]
    steerflow toy [--out DIR] [--seeds 0,1,2] [--steps N] [--workers W]
    steerflow sweep --out DIR --agents A,B --tasks T1,T2 [--seeds 0,1,2] [--grid [AGENT:]KEY=V1,V2]...
                    [--set [AGENT:]KEY=V]... [--train-set KEY=V]... [--jobs N] [--dry-run]
                    [--print-commands] [--unit ID] [--backend local|ray|slurm] [--runs-root DIR]
                    [--unit-cpus N] [--unit-gpus N] [--address HOST:PORT] [--max-retries N]

Every command checks its flags before any work (`validate()`: no data is loaded, nothing is
compiled or written), so a bad value ends at once with the flag named; `parse(argv)` is that
check alone (tests/test_readme_commands.py runs it on every command line of the README and docs/). Exit codes and
signals are described in `steerflow.errors`: 2 for bad input, 1 for a failed run or a filesystem
error, 130/143 for SIGINT/SIGTERM; a user error never prints a traceback.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from steerflow import gl  # noqa: E402
from steerflow.flags import check_out_dir, parse_seed_list
from steerflow.flags import positive as _positive

gl.settle()  # before anything imports MuJoCo: only rendering needs OpenGL


@dataclass
class Generate:
    """Regenerate an OGBench play dataset locally with the package's scripted oracles."""

    domain: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="DOMAIN")]  # cube-single | cube-double | scene | puzzle-3x3 | puzzle-4x4
    episodes: int = 1000  # training episodes (validation gets episodes // 10 more)
    seed: int = 0
    workers: int = 1  # worker processes (output is identical for any count)

    def validate(self):
        from steerflow.data.ogbench_gen import DOMAINS

        if self.domain not in DOMAINS:
            raise ValueError(f"unknown domain {self.domain!r}; valid domains: {', '.join(DOMAINS)}")
        _positive("--episodes", self.episodes)
        _positive("--workers", self.workers)

    def __call__(self):
        from steerflow.data.ogbench_gen import generate_dataset

        path = generate_dataset(self.domain, episodes=self.episodes, seed=self.seed, workers=self.workers)
        print(f"dataset ready: {path}")


@dataclass
class Info:
    """List the cached datasets with sizes and fingerprints."""

    def __call__(self):
        from steerflow.data.cache import data_root, list_datasets

        rows = list_datasets()
        print(f"data directory: {data_root()}  (set STEERFLOW_DATA to move it)")
        if not rows:
            print("no cached datasets; create one with `steerflow data generate cube-single`")
        for row in rows:
            print(json.dumps(row))


@dataclass
class Import:
    """Import your own demonstrations (robomimic HDF5, a LeRobot v3 directory, a Minari dataset):
    validated, normalised and cached under NAME for `steerflow train --dataset NAME`."""

    format: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="FORMAT")]  # robomimic | lerobot | minari
    path: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="PATH")]  # file (robomimic) or directory
    name: str  # cache name, used by `steerflow train --dataset NAME`
    obs_keys: Annotated[str | None, tyro.conf.arg(metavar="K1,K2")] = None  # observation keys, concatenated in this order (default: every low-dim key, sorted)
    split: Annotated[str | None, tyro.conf.arg(metavar="S")] = None  # robomimic filter key mask/S (e.g. train)
    action_low: Annotated[float | None, tyro.conf.arg(metavar="X")] = None  # stated action bounds (default: the data's min/max per dimension)
    action_high: Annotated[float | None, tyro.conf.arg(metavar="X")] = None
    replace: bool = False  # import over an existing dataset of this name

    def keys(self) -> list[str] | None:
        if self.obs_keys is None:
            return None
        keys = [k.strip() for k in self.obs_keys.split(",")]
        if not all(keys) or len(set(keys)) != len(keys):
            raise ValueError(f"--obs-keys {self.obs_keys!r}: expected distinct comma-separated keys")
        return keys

    def validate(self):
        from steerflow.data.imports import FORMATS, check_name

        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}")
        self.path = self.path.expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} not found")
        check_name(self.name)
        self.keys()
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("--action-low and --action-high go together")
        if self.action_low is not None and self.action_high <= self.action_low:
            raise ValueError(f"--action-high {self.action_high} must exceed --action-low {self.action_low}")

    def __call__(self):
        from steerflow.data.imports import import_path, imported_meta
        from steerflow.data.cache import data_root
        from steerflow.runlock import remove_stale

        remove_stale(data_root())  # leftovers of killed imports, before the file is read
        bounds = None if self.action_low is None else (self.action_low, self.action_high)
        path = import_path(self.format, self.path, self.name, obs_keys=self.keys(), split=self.split,
                           replace=self.replace, action_bounds=bounds)
        meta = imported_meta(self.name)
        print(f"imported {meta['episodes']}+{meta['val_episodes']} demos ({meta['transitions']} training "
              f"transitions, obs {meta['obs_dim']}-D, actions {meta['action_dim']}-D, rewards: "
              f"{'yes' if meta['has_rewards'] else 'none (train with --reward sparse-success)'}) -> {path}")
        if not meta["val_episodes"]:
            print("one demo: none is held out, so a run on it without an env scores its action MSE on this training "
                  "demo (a fit, not a held-out score); import two or more demos for a held-out score")


@dataclass
class Demos:
    """Make scripted demonstrations with teleoperation artifacts (pauses, hesitation before grasps,
    micro-corrections, jitter, premature releases) and write them as a robomimic HDF5 file, to be
    imported like your own: `steerflow data import robomimic FILE --name NAME --obs-keys ...`."""

    source: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="SOURCE")]  # fetch-pick-and-place | cube-single-taskN
    out: Annotated[Path, tyro.conf.arg(metavar="FILE.hdf5")]  # the robomimic file to write
    episodes: int = 50  # successful demos to keep (failed attempts are discarded and counted)
    seed: int = 0
    artifacts: Annotated[str, tyro.conf.arg(metavar="A,B|all|none")] = "all"  # pause,hesitation,correction,jitter,release
    replace: bool = False  # overwrite an existing --out

    def validate(self):
        from steerflow.demos import check_source
        from steerflow.demos.teleop import Artifacts

        check_source(self.source)
        _positive("--episodes", self.episodes)
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed}: expected a non-negative integer")
        Artifacts.parse(self.artifacts)
        self.out = self.out.expanduser()
        if self.out.suffix not in (".hdf5", ".h5"):
            raise ValueError(f"--out {self.out}: expected a .hdf5 (or .h5) file name")
        if not self.out.parent.is_dir():
            raise FileNotFoundError(f"--out {self.out}: directory {self.out.parent} not found")
        if self.out.exists() and not self.replace:
            raise FileExistsError(f"--out {self.out} exists; pass --replace to overwrite it")

    def __call__(self):
        import uuid

        from tqdm import tqdm

        from steerflow.demos import import_keys, make_demos, write_demos
        from steerflow.demos.teleop import Artifacts

        from steerflow.errors import RunFailed

        artifacts = Artifacts.parse(self.artifacts)
        with tqdm(total=self.episodes, desc=f"{self.source} demos", unit="demo", dynamic_ncols=True) as bar:
            try:
                demos, stats = make_demos(self.source, self.episodes, self.seed, artifacts, progress=bar.update)
            except RuntimeError as err:  # too many failed attempts
                raise RunFailed(str(err)) from None
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            write_demos(tmp, self.source, demos, artifacts, self.seed)
            os.replace(tmp, self.out)
        finally:
            tmp.unlink(missing_ok=True)
        steps = sum(len(d["actions"]) for d in demos)
        counts = ", ".join(f"{n} {c}{' steps' if n == 'jitter' else ''}" for n, c in stats["counts"].items())
        print(f"wrote {len(demos)} demos ({steps} steps, mean length {steps / len(demos):.1f}) to {self.out}\n"
              f"artifacts ({', '.join(artifacts.active()) or 'none'}): {counts}\n"
              f"discarded {stats['discarded']} failed attempts of {stats['attempts']}"
              + (f"; skipped {stats['trivial']} episodes solved at reset" if stats["trivial"] else "") + "\n"
              f"import: steerflow data import robomimic {shlex.quote(str(self.out))} --name NAME "
              f"--obs-keys {','.join(import_keys(self.source))}")


@dataclass
class Render:
    """Render a visual OGBench dataset (64x64x3 frames, as visual-DOMAIN-taskN) from a generated state
    dataset's qpos/qvel, cached under NAME for `steerflow train --dataset NAME` (the CNN encoder)."""

    task: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="TASK")]  # cube-single-taskN | cube-double-taskN (rewards relabelled for it)
    name: str  # cache name, used by `steerflow train --dataset NAME`
    episodes: int = 10  # episodes to render (the first ones of the source dataset's training split)
    dataset_episodes: int = 1000  # the generated state dataset to render from (generated when missing)
    seed: int = 0  # of the generated state dataset
    episode_steps: int | None = None  # steps per generated episode (default: OGBench's 1001)
    replace: bool = False  # render over an existing dataset of this name

    def validate(self):
        from steerflow.data.imports import check_name
        from steerflow.data.render import RENDER_DOMAINS
        from steerflow.data.tasks import parse_task

        spec = parse_task(self.task)
        if spec.domain not in RENDER_DOMAINS:
            raise ValueError(f"{self.task}: cannot render domain {spec.domain!r}; renderable: {', '.join(RENDER_DOMAINS)}")
        check_name(self.name)
        _positive("--episodes", self.episodes)
        _positive("--dataset-episodes", self.dataset_episodes)
        if self.episodes > self.dataset_episodes:
            raise ValueError(f"--episodes {self.episodes} exceeds --dataset-episodes {self.dataset_episodes}")
        if self.episode_steps is not None and self.episode_steps < 3:
            raise ValueError(f"--episode-steps {self.episode_steps}: expected at least 3")

    def __call__(self):
        from steerflow.data.imports import imported_meta
        from steerflow.data.render import render_task_dataset

        path, timing = render_task_dataset(self.task, self.name, self.episodes, self.dataset_episodes, self.seed,
                                           self.episode_steps, replace=self.replace)
        meta = imported_meta(self.name)
        print(f"rendered {timing['frames']} frames in {timing['render_s']:.1f} s ({timing['frames_per_s']:.1f} frames/s, "
              f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {meta['episodes']}+{meta['val_episodes']} episodes, "
              f"{meta['transitions']} training transitions, camera key 'pixels' {meta['image_keys']['pixels']} -> {path}")


@dataclass
class Data:
    """Generate, import, make demos, render and inspect datasets."""

    # flat subcommands and flags: `steerflow data generate DOMAIN --episodes N`
    command: tyro.conf.OmitSubcommandPrefixes[Union[Annotated[Generate, tyro.conf.subcommand("generate")],
                                                    Annotated[Import, tyro.conf.subcommand("import")],
                                                    Annotated[Demos, tyro.conf.subcommand("demos")],
                                                    Annotated[Render, tyro.conf.subcommand("render")],
                                                    Annotated[Info, tyro.conf.subcommand("info")]]]

    def validate(self):
        getattr(self.command, "validate", lambda: None)()

    def __call__(self):
        self.command()


# A flag that may be repeated and take several values: `--set a=1 --set b=2` or `--set a=1 b=2`
Repeatable = Annotated[tyro.conf.UseAppendAction[list[list[str]]], tyro.conf.arg(metavar="KEY=V ...")]


def flatten(groups: list[list[str]]) -> list[str]:
    return [item for group in groups for item in group]


@dataclass
class Train:
    """Train an agent on a task; prints the final success rate."""

    agent: str = "lps"  # lps | lpsd | bc-mf | bc-fm | qc-fql | qc-mfql | qc-bon | dsrl-na | dsrl-na-sac | cfgrl | qpilots-u | qpilots-m
    task: Annotated[str | None, tyro.conf.arg(metavar="TASK")] = None  # DOMAIN-taskN[-sparse] (default cube-single-task2), or tasks of one domain T1,T2,...: one program, OUT/TASK each
    seeds: str = "0"  # comma-separated, e.g. 0,1,2
    steps: Annotated[int | None, tyro.conf.arg(metavar="INT")] = None  # overrides the preset's step count
    preset: str = "cpu"  # smoke | cpu | default | paper
    out: Annotated[Path | None, tyro.conf.arg(metavar="DIR")] = None  # run directory (default runs/AGENT-TASK-PRESET)
    resume: bool = False  # continue a killed run from its last checkpoint (same flags; only --steps may be raised)
    parallel: Literal["vmap", "processes"] = "vmap"  # seeds vmapped in one process, or a process per seed
    set: Repeatable = field(default_factory=list)  # agent-config overrides KEY=VALUE, e.g. critic.num_critics=10
    train_set: Repeatable = field(default_factory=list)  # training-config overrides, e.g. eval_episodes=10
    base_from: Annotated[Path | None, tyro.conf.arg(metavar="RUN_DIR")] = None  # steer the frozen FM base of this finished run (qpilots-u, qpilots-m)
    dataset: Annotated[str | None, tyro.conf.arg(metavar="NAME")] = None  # train on an imported dataset (`steerflow data import`) instead of --task
    reward: Annotated[str | None, tyro.conf.arg(metavar="MODE")] = None  # imported data: given | sparse-success (needed when it has no rewards)
    eval_task: Annotated[str | None, tyro.conf.arg(metavar="TASK")] = None  # imported data: evaluate in this OGBench env (default: held-out action MSE)
    env: Annotated[str | None, tyro.conf.arg(metavar="MODULE:FACTORY")] = None  # imported data: evaluate and fine-tune in your own Gymnasium env (a factory or a registered id)
    env_set: Repeatable = field(default_factory=list)  # keyword arguments of the --env factory, KEY=VALUE (JSON values)
    max_episode_steps: Annotated[int | None, tyro.conf.arg(metavar="INT")] = None  # --env: time limit (default: the env's own)
    success: Annotated[str | None, tyro.conf.arg(metavar="KEY|MODULE:FN")] = None  # --env: success from this info key or fn(obs, info) (default: info success / is_success)

    @property
    def task_name(self) -> str:
        """The run's task: --task, --eval-task for an imported dataset, or its offline placeholder."""
        from steerflow.data.imports import DATASET_PREFIX, REWARD_MODES

        if self.env is None:
            for flag, value in (("--env-set", flatten(self.env_set)), ("--max-episode-steps", self.max_episode_steps),
                                ("--success", self.success)):
                if value:
                    raise ValueError(f"{flag}: only with --env MODULE:FACTORY")
        if self.dataset is None:
            for flag, value in (("--reward", self.reward), ("--eval-task", self.eval_task), ("--env", self.env)):
                if value is not None:
                    raise ValueError(f"{flag} {value}: only for imported data (--dataset NAME)")
            return self.task or "cube-single-task2"
        if self.task is not None:
            raise ValueError(f"--task {self.task} with --dataset {self.dataset}: the dataset replaces the task; "
                             "name the env to evaluate in with --eval-task")
        if self.reward is not None and self.reward not in REWARD_MODES:
            raise ValueError(f"--reward {self.reward}: expected one of {', '.join(REWARD_MODES)}")
        if self.env is not None:
            from steerflow.envs.gym_env import ENV_PREFIX

            if self.eval_task is not None:
                raise ValueError(f"--env {self.env} with --eval-task {self.eval_task}: name one env to evaluate in")
            if self.max_episode_steps is not None and self.max_episode_steps < 1:
                raise ValueError(f"--max-episode-steps {self.max_episode_steps}: expected a positive number of steps")
            return ENV_PREFIX + self.env
        return self.eval_task or f"{DATASET_PREFIX}{self.dataset}"

    def env_json(self) -> dict | None:
        """The run's `env` record (read back by `steerflow.envs.gym_env.GymEnvSpec.from_json`)."""
        if self.env is None:
            return None
        from steerflow.envs.gym_env import parse_env_kwargs

        return {"factory": self.env, "kwargs": parse_env_kwargs(flatten(self.env_set)),
                "max_episode_steps": self.max_episode_steps, "success": self.success}
    from_run: Annotated[Path | None, tyro.conf.arg(name="from", metavar="RUN_DIR")] = None  # continue this finished offline run's last checkpoint online, in --out
    online_steps: Annotated[int | None, tyro.conf.arg(metavar="INT")] = None  # then fine-tune online for this many env steps per seed
    online_ratio: Annotated[float | None, tyro.conf.arg(metavar="R")] = None  # online share of each batch (LPS: 0.5); default: offline ∪ online replay
    updates_per_env_step: Annotated[float | None, tyro.conf.arg(metavar="U")] = None  # gradient updates per env step online (default 1)
    log: str = "csv"  # trackers fed as the run trains: csv (always), tensorboard (RUN_DIR/tensorboard), wandb (RUN_DIR/wandb, offline)

    def spec(self):
        from steerflow.config import parse_overrides
        from steerflow.train import RunSpec

        seeds = parse_seed_list(self.seeds)
        train_overrides = parse_overrides(flatten(self.train_set), flag="--train-set")
        if self.steps is not None:
            if self.steps < 1:
                raise ValueError(f"--steps {self.steps}: expected a positive number of training steps")
            train_overrides["steps"] = str(self.steps)
        for name in ("online_steps", "online_ratio", "updates_per_env_step"):
            value = getattr(self, name)
            if value is not None:
                if name == "online_steps" and value < 1:
                    raise ValueError(f"--online-steps {value}: expected a positive number of env steps")
                train_overrides[name] = str(value)
        if self.from_run is not None and int(train_overrides.get("online_steps", 0)) < 1:  # (or --train-set online_steps=N)
            raise ValueError(f"--from {self.from_run}: continues that run online; --online-steps N is needed")
        overrides = parse_overrides(flatten(self.set))
        if self.base_from is not None:
            from steerflow.agents import get_agent
            from steerflow.frozen_base import overrides_for

            overrides = overrides_for(self.base_from, get_agent(self.agent), overrides, seeds)
        return RunSpec(agent=self.agent, task=self.task_name, seeds=seeds, preset=self.preset, overrides=overrides,
                       train_overrides=train_overrides,
                       base_from=None if self.base_from is None else str(self.base_from),
                       dataset=self.dataset, reward=self.reward, env=self.env_json(),
                       from_run=None if self.from_run is None else str(self.from_run))

    @property
    def out_dir(self) -> Path:
        return self.out or Path("runs") / f"{self.agent}-{self.dataset or self.task_name.replace(',', '+')}-{self.preset}"

    def validate(self):
        """Every flag, the task and the agent config, before any data is loaded or written."""
        from steerflow.tracking import check_available, parse_kinds
        from steerflow.train import check_run

        check_out_dir("--out", self.out_dir)
        check_available(parse_kinds(self.log))
        run = self.spec()
        if self.parallel == "processes" and "," in run.task:
            raise ValueError(f"--parallel processes with --task {run.task}: several tasks train as one vmapped "
                             "program (--parallel vmap)")
        if run.from_run:
            from steerflow.train.presets import from_spec

            run = from_spec(run)
        check_run(run)

    def __call__(self):
        from steerflow.tracking import parse_kinds
        from steerflow.train import train, train_processes

        run, out, log = self.spec(), self.out_dir, parse_kinds(self.log)
        if self.parallel == "processes" and len(run.seeds) > 1:
            final = train_processes(run, out, resume=self.resume, log=log)
        else:
            final = train(run, out, resume=self.resume, log=log)
        for task, one in final.get("tasks", {}).items():  # a multi-task run: one directory per task
            print(f"final success ({one['agent']} on {task}, {one['steps']} steps): mean {one['mean']:.3f}, "
                  f"per seed {one['final_success']}  -> {out / task}/final.json")
        if "tasks" in final:
            return
        if final.get("metric") == "val_action_mse":
            from steerflow.data.source import offline_metric_name

            print(f"final {offline_metric_name(final.get('scored_on', 'val'))} ({final['agent']} on {final['dataset']}, "
                  f"{final['steps']} steps): "
                  f"mean {final['mean']:.4f}, per seed {final['val_action_mse']}  -> {out}/final.json")
            return
        print(f"final success ({final['agent']} on {final['task']}, {final['steps']} steps): "
              f"mean {final['mean']:.3f}, per seed {final['final_success']}  -> {out}/final.json")


@dataclass
class Eval:
    """Evaluate a run's last checkpoint, or record videos of its episodes (--video N)."""

    run_dir: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN_DIR")]
    episodes: int = 50
    workers: int = 2  # env worker processes (0: step the envs in this process)
    video: Annotated[int | None, tyro.conf.arg(metavar="N")] = None  # instead: record N episodes of the first seed's policy as MP4s
    video_dir: Annotated[Path | None, tyro.conf.arg(metavar="DIR")] = None  # where the MP4s go (default RUN_DIR/video)
    video_steps: Annotated[int | None, tyro.conf.arg(metavar="K")] = None  # end each recorded episode after K steps (default: the env's limit)
    set: Repeatable = field(default_factory=list)  # act-only agent-config overrides, e.g. select=8 (LPS)

    @property
    def overrides(self) -> dict:
        from steerflow.config import parse_overrides

        return parse_overrides(flatten(self.set))

    def validate(self):
        _positive("--episodes", self.episodes)
        self.overrides  # KEY=VALUE form, before anything loads
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: expected 0 or more")
        if self.video is None:
            for flag, value in (("--video-dir", self.video_dir), ("--video-steps", self.video_steps)):
                if value is not None:
                    raise ValueError(f"{flag} {value}: only with --video N")
            return
        from steerflow.video import require_video

        _positive("--video", self.video)
        if self.video_steps is not None:
            _positive("--video-steps", self.video_steps)
        if self.video_dir is not None:
            check_out_dir("--video-dir", self.video_dir)
        require_video("--video")

    def __call__(self):
        from steerflow.train import evaluate_run

        if self.video is not None:
            from steerflow.train.evaluation import record_run

            step, paths = record_run(self.run_dir, self.video, self.video_dir, self.video_steps,
                                     overrides=self.overrides)
            solved = sum(p.stem.endswith("_success") for p in paths)
            print(f"{len(paths)} video(s) of {self.run_dir} at step {step}, {solved} success(es):")
            print("\n".join(str(p) for p in paths))
            return
        for record in evaluate_run(self.run_dir, self.episodes, self.workers, self.overrides):
            print(json.dumps(record))


@dataclass
class Export:
    """Export a run's last checkpoint as a self-contained policy artifact (steerflow.export):
    the acting function with the normalisers baked in, its config, spec and dataset fingerprint."""

    run_dir: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN_DIR")]
    format: Literal["onnx", "stablehlo"] = "onnx"  # onnx (onnxruntime) | stablehlo (jax.export)
    out: Annotated[Path | None, tyro.conf.arg(metavar="DIR")] = None  # artifact directory (default RUN_DIR/export-FORMAT)
    seed_index: int = 0  # which of the run's vmapped seeds

    @property
    def out_dir(self) -> Path:
        return self.out or self.run_dir / f"export-{self.format}"

    def validate(self):
        if self.seed_index < 0:
            raise ValueError(f"--seed-index {self.seed_index}: expected 0 or more")
        check_out_dir("--out", self.out_dir)

    def __call__(self):  # export_run checks the run (checkpoint, agent, format) before converting
        from steerflow.export import export_run

        out = export_run(self.run_dir, self.format, self.out_dir, self.seed_index)
        print(f"exported {self.format} policy -> {out} (load it with steerflow.policy.load)")


@dataclass
class Report:
    """Aggregate finished runs (run directories, or directories holding them) into Markdown
    tables with 95% bootstrap CIs, learning-curve PNGs and records.json."""

    run_dirs: tyro.conf.Positional[list[Path]]  # run directories, or directories holding them (searched recursively)
    out: Annotated[Path, tyro.conf.arg(metavar="DIR")] = Path("report")  # output directory for report.md, records.json, curves_*.png

    def validate(self):
        check_out_dir("--out", self.out)

    def __call__(self):
        from steerflow.report import build_report

        result = build_report(self.run_dirs, self.out)
        print(result["markdown"])
        print(f"report written to {self.out}/ (report.md, records.json, {len(result['files']) - 2} PNGs)")




@dataclass
class Toy:
    """The 2-D toy study of the LPS paper's Figures 2 and 3 (~2.5-3 min on 2 CPU cores): QC-FQL
    across α, DSRL-NA, LPS, QPILOTS-U/M across α on a one-step task with an empty, rewarding corner; writes
    fig2_alpha.png, fig3_latent_critic.png and summary.json and prints the numbers behind them."""

    out: Path = Path("runs/toy")
    seeds: str = "0,1,2"  # agent seeds, vmapped per method
    steps: int = 3000  # updates per method
    workers: int = 2  # training processes at once (one CPU thread each)

    def validate(self):
        parse_seed_list(self.seeds)
        _positive("--steps", self.steps)
        _positive("--workers", self.workers)
        check_out_dir("--out", self.out)

    def __call__(self):
        from steerflow.studies import toy

        seeds = tuple(parse_seed_list(self.seeds))

        toy.main(self.out, toy.ToyConfig(seeds=seeds, steps=self.steps), workers=self.workers)


@dataclass
class Sweep:
    """Run agents x tasks x the product of --grid values as units: one configuration with all its
    seeds (vmapped) per unit, each an independent, resumable `steerflow train` run in
    OUT/runs/<id>. Done units are skipped and partial ones resumed, so re-running continues a
    killed sweep; OUT/manifest.json lists every unit and its command."""

    out: Path  # sweep directory: manifest.json, runs/<id>/, logs/<id>.log
    agents: str = ""  # comma-separated, e.g. lps,bc-mf (leave out to act on every unit of OUT/manifest.json)
    tasks: str = ""  # comma-separated DOMAIN-taskN[-sparse]
    seeds: str = "0,1,2"  # every unit trains all of them, vmapped in one process
    preset: str = "cpu"  # smoke | cpu | default | paper
    grid: Repeatable = field(default_factory=list)  # agent-config values to sweep (scalars; product of all)
    set: Repeatable = field(default_factory=list)  # agent-config overrides (AGENT: scopes one)
    train_set: Repeatable = field(default_factory=list)  # training-config overrides, e.g. steps=30000
    jobs: int = 1  # units run at a time on this machine (one CPU thread each when > 1)
    dry_run: bool = False  # print the units and their status (done/partial/pending), run nothing
    unit: Annotated[str | None, tyro.conf.arg(metavar="ID")] = None  # run this unit in the foreground (a cluster job)
    print_commands: bool = False  # print one `steerflow sweep --unit ID` command per unfinished unit
    backend: Literal["local", "ray", "slurm"] = "local"  # where units run: this machine, a Ray cluster, a SLURM job array
    runs_root: Annotated[Path | None, tyro.conf.arg(metavar="DIR")] = None  # run directories on storage every node sees (default OUT/runs)
    unit_cpus: float = 1.0  # ray/slurm: CPUs per unit
    unit_gpus: float = 0.0  # ray/slurm: GPUs per unit (the unit's seeds are vmapped on it)
    address: str = ""  # ray: cluster to join (HOST:PORT or auto); empty starts a local cluster
    max_retries: int = 3  # ray: re-runs of a unit whose worker or node was lost (it resumes from its checkpoint)
    timeout_min: int = 1440  # slurm: time limit per job; a timed-out or preempted job is requeued and resumes
    partition: str = ""  # slurm: partition
    mem_gb: float = 0.0  # slurm: memory per job (0: the partition's default)
    slurm_cluster: Literal["slurm", "local"] = "slurm"  # slurm: `local` runs the array with submitit's LocalExecutor
    log: str = "csv"  # trackers each finished unit is exported to: csv (always), tensorboard, wandb (offline)

    def options(self):
        """The one `steerflow.sweep.SweepOptions` these flags ask for."""
        from steerflow.backends import UnitResources
        from steerflow.sweep import SweepOptions

        resources = UnitResources(cpus=self.unit_cpus, gpus=self.unit_gpus, max_retries=self.max_retries,
                                  timeout_min=self.timeout_min, partition=self.partition, mem_gb=self.mem_gb)
        return SweepOptions(out=self.out, agents=self.agents, tasks=self.tasks, seeds=self.seeds, preset=self.preset,
                            grid=flatten(self.grid), sets=flatten(self.set), train_sets=flatten(self.train_set),
                            jobs=self.jobs, dry_run=self.dry_run, unit=self.unit, print_commands=self.print_commands,
                            backend=self.backend, resources=resources, address=self.address, runs_root=self.runs_root,
                            slurm_cluster=self.slurm_cluster, log=self.log)

    def validate(self):  # every unit resolves, nothing is written
        self._options = self.options().validate()

    def __call__(self):
        from steerflow.sweep import run

        code = run(getattr(self, "_options", None) or self.options())
        if code:
            raise SystemExit(code)


Command = Union[
    Annotated[Data, tyro.conf.subcommand("data")],
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[Eval, tyro.conf.subcommand("eval")],
    Annotated[Export, tyro.conf.subcommand("export")],
    Annotated[Report, tyro.conf.subcommand("report")],
    Annotated[Sweep, tyro.conf.subcommand("sweep")],
    Annotated[Toy, tyro.conf.subcommand("toy")],
]


def parse(argv: list[str]):
    """The command `argv` names, parsed and validated but not run (nothing is read or written).
    Bad flags exit 2 as in `main`."""
    command = tyro.cli(Command, args=argv, prog="steerflow",
                       description="Offline RL with latent-steered (LPS) flow policies.")
    getattr(command, "validate", lambda: None)()
    return command


def _resume_hint(argv: list[str]) -> str:
    """The command that continues an interrupted one: `train` with `--resume`, a sweep as it was."""
    args = list(argv) + ([] if argv[:1] != ["train"] or "--resume" in argv else ["--resume"])
    return "steerflow " + shlex.join(args)


def main(argv: list[str] | None = None) -> None:
    from steerflow.errors import Interrupted, RunFailed, describe_os_error, raising_signals

    argv = list(sys.argv[1:] if argv is None else argv)

    def fail(message: str, code: int):
        print(f"steerflow: error: {message}", file=sys.stderr)
        raise SystemExit(code)

    try:
        with raising_signals():
            parse(argv)()
    except Interrupted as err:
        if err.step is not None:
            where = f"step {err.step}/{err.total}" if err.total else f"step {err.step} (online, between two rounds)"
            print(f"steerflow: interrupted ({err}) at {where}; checkpoint saved in "
                  f"{err.run_dir}; continue with: {_resume_hint(argv)}", file=sys.stderr)
        else:  # before training started (nothing partial is left), or `--parallel processes`' parent
            hint = f"; continue with: {_resume_hint(argv)}" if argv[:1] in (["train"], ["sweep"]) else ""
            print(f"steerflow: interrupted ({err}){hint}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:  # e.g. `--parallel processes`: each seed's process checkpointed itself
        hint = f"; continue with: {_resume_hint(argv)}" if argv[:1] in (["train"], ["sweep"]) else ""
        print(f"steerflow: interrupted (SIGINT){hint}", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as err:
        if isinstance(err, OSError) and err.errno is not None and err.filename is not None:
            fail(describe_os_error(err), 2)
        fail(str(err), 2)
    except KeyError as err:
        fail(f"missing key {err}", 2)
    except RunFailed as err:
        fail(str(err), 1)
    except OSError as err:  # permission, read-only file system, disk full, ...
        fail(describe_os_error(err), 1)


if __name__ == "__main__":
    main()
