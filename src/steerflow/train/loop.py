"""The training loop of a run directory (see `steerflow.train` for its layout)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from steerflow.errors import EvalStopped

from .checkpoint import checkpoint_path, load_checkpoint, load_online, save_checkpoint
from .core import make_finite_tracker, make_online_train_call, make_policy, make_train_call
from .evaluation import _record_offline_eval, copy_curves, evaluate_states
from .online import OnlinePhase, run_online
from .presets import RunSpec, check_run, from_spec, resume_spec
from .rundir import RunDir, members


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; elsewhere 0: a budget counts from the loop)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def _diverged(out: Path, run: RunSpec, bad_step: int, values: dict, last_good: int | None) -> "Exception":
    from steerflow.errors import TrainingDiverged
    from steerflow.runinfo import atomic_write_json

    bad = {k: [str(float(x)) for x in np.atleast_1d(v)] for k, v in values.items() if not np.all(np.isfinite(v))}
    losses = [k for k in bad if "loss" in k] or list(bad)  # name the losses; other metrics follow them
    shown = ", ".join(f"{k}={next(x for x in bad[k] if not np.isfinite(float(x)))}" for k in losses)
    seeds = sorted({s for k in losses for s, x in zip(run.seeds, bad[k]) if not np.isfinite(float(x))})
    shown += f" (seed {','.join(map(str, seeds))})"
    kept = (f"the last good checkpoint (step {last_good}) is kept in {out / 'checkpoints' / 'latest.msgpack'}"
            if last_good is not None else "no checkpoint had been written yet")
    message = (f"training diverged: non-finite loss {shown} in the updates up to step {bad_step}; stopped, "
               f"{kept}; the run is marked failed in {out / 'failed.json'} and `steerflow report` leaves it out. "
               "Lower the learning rate or check the data")
    atomic_write_json(out / "failed.json", {"status": "diverged", "step": bad_step, "losses": bad,
                                            "last_checkpoint_step": last_good, "message": message})
    return TrainingDiverged(message)


def _short(step: int, tc, online) -> bool:
    """Whether the run stopped before its budget (only a wall-clock deadline does so without a signal)."""
    return step < tc.steps or bool(online and online.env_steps < tc.online_steps)


def train(run: RunSpec, out: Path, resume: bool = False, quiet: bool = False, log=("csv",)) -> dict:
    """Train every seed of `run` in this process (vmapped) and return the final record (of a
    multi-task run, `{"tasks": {task: final record}}`; `train.rundir`). A run directory this call
    created is removed again when it fails before its first checkpoint (a diverged run keeps it:
    `failed.json` says what happened). `log`: the trackers (csv, tensorboard, wandb;
    `steerflow.tracking`) that receive the metrics and evaluations as written."""
    from contextlib import ExitStack

    from steerflow.errors import TrainingDiverged
    from steerflow.runlock import remove_partial_files

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory (it must be a directory)")
    runs = members(run, out)  # a multi-task run's tasks checked before anything is written
    created = make_run_dir(out)
    with ExitStack() as held:  # the directories are this process's until it returns (a second writer is refused)
        for path in dict.fromkeys([out, *(o for _, o in runs)]):
            path.mkdir(parents=True, exist_ok=True)
            held.enter_context(run_lock(path))
        try:
            remove_partial_files(out, "checkpoints")  # of a killed run: nobody else writes here now
            return _train(runs, out, resume, quiet, log)
        except TrainingDiverged:
            raise
        except BaseException:
            if created and out.is_dir() and not checkpoint_path(out).exists():
                import shutil

                shutil.rmtree(out, ignore_errors=True)
            raise


def make_run_dir(out: Path) -> bool:
    """Create `out` (and its parents); True when this call created it."""
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def run_lock(out: Path):
    """Own run directory `out` (its `.lock`): another `train` into it is refused, naming this process."""
    from steerflow.runlock import hold

    return hold(out / ".lock", f"run directory {out}", hint="choose another --out")


def _load_data(run: RunSpec, tc, out: Path, resume: bool, continuing: bool):
    """(train, val, info, normalisation) of the run's data; a checkpoint continues only on the data
    (and in the units) it was trained on, and `--from` only on its offline run's data."""
    from steerflow.data import normalization, source

    train_data, val_data, data_info, norm = source.load_run_data(run, tc, workers=os.cpu_count() or 1)
    if continuing:
        source.check_same_dataset(out, data_info, "--resume")
    if run.from_run:
        source.check_same_dataset(Path(run.from_run), data_info, "--from")
    stored_norm = normalization.load(out) if resume else None
    if stored_norm is not None:
        normalization.check_same(stored_norm, norm, f"--resume {out} on {run.dataset or run.task}")
    return train_data, val_data, data_info, norm


def _settings(run: RunSpec, out: Path, resume: bool, has_ckpt: bool, quiet: bool) -> RunSpec:
    """The run as it trains: `--from`'s offline phase, or on `--resume` the stored settings (steps
    possibly raised); a directory holding a run is refused without `--resume`."""
    if run.from_run:
        run = from_spec(run)  # the offline phase is that run's
    if resume and (out / "config.json").exists():
        return resume_spec(out / "config.json", run, quiet)
    if has_ckpt and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    return run


def _load_program_data(dirs: list[RunDir], tc, resume: bool, continuing: bool):
    """(train, val, [data info per directory], normalisation) of the program: a multi-task run's
    train transitions are its first task's with every task's `rewards` and `masks` in
    `per_task` (`data.chunks.stack_tasks`); each task's data is checked against its directory."""
    train_data, val_data, info, norm = _load_data(dirs[0].run, tc, dirs[0].out, resume, continuing)
    infos, per_task = [info], [train_data]
    for d in dirs[1:]:
        other, _, other_info, _ = _load_data(d.run, tc, d.out, resume, continuing)
        if other_info["fingerprint"] != info["fingerprint"]:  # one domain's tasks share one play dataset
            raise ValueError(f"tasks {dirs[0].run.task} and {d.run.task} were loaded from different datasets "
                             f"({info['dataset_dir']}, {other_info['dataset_dir']})")
        infos.append(other_info)
        per_task.append({"rewards": other["rewards"], "masks": other["masks"]})
    return train_data, val_data, infos, norm, per_task


def _fresh_state(agent, config, spec, run: RunSpec, out: Path, continuing: bool):
    """(states, keys, step), every seed vmapped: fresh (with `--base-from`'s frozen base) or the
    offline run `--from` continues; on `--resume` the caller reads its checkpoint over them."""
    import jax

    seeds = list(run.seeds)
    seed_keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in seeds])
    init_keys, keys = jax.vmap(lambda k: jax.random.split(k))(seed_keys).transpose((1, 0, 2))
    states = jax.vmap(lambda k: agent.init(k, spec, config))(init_keys)
    if run.base_from and not continuing:
        from steerflow.frozen_base import load_into

        states = load_into(states, Path(run.base_from), seeds, spec.obs_dim, spec.chunk_dim)
    step = 0
    if run.from_run and not continuing:
        states, keys, step = load_checkpoint(Path(run.from_run), states, keys)
        copy_curves(Path(run.from_run), out)
    return states, keys, step


def _initial_state(agent, config, spec, dirs: list[RunDir], out: Path, continuing: bool, quiet: bool):
    """(states, keys, step) of the program: every directory's seeds, concatenated along the vmapped
    axis in the order of `dirs`, or the program's checkpoint in `out` on `--resume`."""
    import jax

    parts = [_fresh_state(agent, config, spec, d.run, d.out, continuing) for d in dirs]
    states, keys, step = parts[0] if len(parts) == 1 else (
        *jax.tree.map(lambda *a: jax.numpy.concatenate(a), *[p[:2] for p in parts]), 0)
    if continuing:
        states, keys, step = load_checkpoint(out, states, keys)
        if not quiet:
            print(f"resuming {out} from step {step}")
    return states, keys, step


def _final_record(d: RunDir, tc, step: int, data_info: dict, online, run_start: float) -> dict:
    """final.json of one directory: its last evaluation (read back when a finished run was
    resumed), the online phase's counters, a wall-clock stop, and the provenance."""
    from steerflow.runinfo import device_description, git_commit

    run, record, last = d.run, d.record, step
    if record is None:  # resumed a run that had already finished
        last = max(int(f.stem.split("_")[1]) for f in (d.out / "evals").glob("step_*.json"))
        record = json.loads((d.out / "evals" / f"step_{last:08d}.json").read_text())
    final = {"agent": run.agent, "task": run.task, "preset": run.preset, "steps": last, "seeds": d.seeds,
             "final_success": record["success"], "mean": record["mean"], "episodes": record["episodes"],
             **({"metric": record.get("metric", "success"), "dataset": run.dataset, "reward": data_info.get("reward")}
                if run.dataset else {}),
             **({"val_action_mse": record["val_action_mse"], "scored_on": record.get("scored_on", "val")}
                if "val_action_mse" in record else {}),
             **({"offline_steps": tc.steps, "online_env_steps": online.counters["env_steps"].tolist(),
                 "online_episodes": online.counters["episodes"], "online_successes": online.counters["successes"],
                 "online_ratio": tc.online_ratio, "updates_per_env_step": tc.updates_per_env_step,
                 "online_timing_this_process": {k: round(v, 2) for k, v in online.timing.items()}}
                if online else {}),
             **({"stopped": "max_wall_s", "max_wall_s": tc.max_wall_s, "target_steps": tc.steps,
                 "target_online_steps": tc.online_steps} if _short(step, tc, online) else {}),
             "device": device_description(), "commit": git_commit(), "overrides": run.overrides,
             "wall_s_this_process": round(time.perf_counter() - run_start, 1)}  # since the loop (re)started
    return final


class Program:
    """One training process's state (every directory's seeds, vmapped) and what the phases do with
    it: a host call of updates with its log, evaluation and checkpoint when due (`one_call`),
    evaluation per directory, checkpoints, the divergence check and the wall-clock deadline."""

    def __init__(self, agent, tc, spec, dirs: list[RunDir], out: Path, norm, state, saved_step, online,
                 offline, quiet: bool):
        import jax

        self.agent, self.tc, self.spec, self.dirs, self.out, self.norm = agent, tc, spec, dirs, out, norm
        self.states, self.keys, self.step = state
        self.saved_step = saved_step  # the last good checkpoint on disk
        self.online, self.offline, self.quiet = online, offline, quiet
        self.policy, self.track = make_policy(agent), make_finite_tracker()
        self.bad_step, self.bad_values = jax.numpy.int32(-1), None
        self.window = {"t": time.perf_counter(), "steps": 0, "first": True}
        self.run_start = time.perf_counter()
        self.deadline = self.run_start + tc.max_wall_s - process_age()  # `max_wall_s` counts from the process's start
        self.online_active = bool(online) and self.step >= tc.steps
        self.received: list = []  # the deferred signals (`errors.deferred_signals`)
        self.bar = None

    def progress(self, total: int, initial: int, desc: str, **kw):
        from tqdm import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=self.quiet, dynamic_ncols=True,
                        smoothing=0.05, **kw)

    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.tc.steps

    def evaluated(self) -> bool:
        return all(d.record is not None and d.record["step"] == self.step for d in self.dirs)

    def out_of_time(self) -> bool:
        return bool(self.tc.max_wall_s) and time.perf_counter() >= self.deadline

    def checkpoint(self):
        if self.saved_step == self.step:
            return
        extra = {"online": self.online.state_dict()} if self.online_active else {}
        save_checkpoint(self.out, self.states, self.keys, self.step, **extra)
        if len(self.dirs) > 1:  # each task's directory also holds its own rows, for eval, export and report
            for d in self.dirs:
                save_checkpoint(d.out, d.take(self.states), d.take(self.keys), self.step)
        self.saved_step = self.step

    def checkpoint_between_rounds(self):
        """Online: a checkpoint between rounds once `checkpoint_every` updates have passed."""
        every = self.tc.checkpoint_every
        if self.saved_step is None or self.step // every > self.saved_step // every:
            self.check_finite()
            self.checkpoint()

    def check_finite(self):
        """Raise `TrainingDiverged` (and write failed.json) if an update since the last check was not finite."""
        import jax

        if self.bad_values is not None and int(self.bad_step) >= 0:
            values = jax.device_get(self.bad_values)
            bad = [d for d in self.dirs if not all(np.all(np.isfinite(v)) for v in d.take(values).values())]
            errors = [_diverged(d.out, d.run, int(self.bad_step), d.take(values), self.saved_step) for d in bad or self.dirs[:1]]
            raise errors[0]

    def evaluate(self, missing_only: bool = False):
        for d in self.dirs:
            if not (missing_only and (d.out / "evals" / f"step_{self.step:08d}.json").exists()):
                self._evaluate_dir(d)

    def _evaluate_dir(self, d: RunDir):
        from steerflow.data import source
        from steerflow.video import during_training

        eval_start, step = time.perf_counter(), self.step
        if d.task is None:
            off = self.offline
            mse = source.offline_action_mse(self.agent, self.states, off["ds"], off["starts"], self.policy, seed=step)
            d.record = _record_offline_eval(d.out, step, d.seeds, mse, d.run, time.perf_counter() - eval_start,
                                            d.trackers, off["scored_on"])
            self.bar.write(f"step {step}: {source.offline_metric_name(off['scored_on'])} {d.record['mean']:.4f} per seed "
                           f"{np.round(mse, 4).tolist()}")
            return
        where = "" if len(self.dirs) == 1 else f" {d.run.task}"
        own, policy = d.take(self.states), source.normalized_policy(self.policy, self.norm)
        off = self.offline  # imported demos evaluated in an env: their held-out action MSE beside success
        mse = None if off is None else source.offline_action_mse(self.agent, own, off["ds"], off["starts"], self.policy, seed=step)
        success, final_reward = evaluate_states(
            self.agent, own, self.spec, d.task, self.tc.eval_episodes, self.tc.eval_workers, seed=step, policy=policy,
            pool=d.pool, show_progress=not self.quiet, desc=f"eval at step {step}{where}",
            should_stop=lambda: bool(self.received), with_final_reward=True)
        env_steps = self.online.counters["env_steps"].tolist() if self.online_active else None
        rec = d.record_success(step, success, final_reward, time.perf_counter() - eval_start, env_steps=env_steps,
                               val_action_mse=mse)
        self.bar.write(f"step {step}{where}: success {rec['mean']:.3f} per seed {np.round(rec['success'], 3).tolist()}"
                       + ("" if mse is None else f", held-out action MSE {np.round(mse, 4).tolist()}"))
        during_training(d.out, self.tc, step, d.task, policy, own, self.quiet, lambda: bool(self.received))  # every video_every
        if self.online_active:
            self.online.timing["eval_s"] += time.perf_counter() - eval_start

    def one_call(self, call, *args):
        """One host call of `updates_per_call` updates (either phase), then its log, evaluation and
        (offline) checkpoint when due."""
        import jax

        tc = self.tc
        self.states, self.keys, metrics = call(self.states, self.keys, *args)
        self.step += tc.updates_per_call
        if self.bad_values is None:
            self.bad_values = jax.tree.map(jax.numpy.zeros_like, metrics)
        self.bad_step, self.bad_values = self.track(self.bad_step, self.bad_values, metrics, self.step)
        if self.window["first"]:  # steps/s leaves out the compilation, which the first call includes
            jax.block_until_ready(self.states)
            self.window.update(t=time.perf_counter(), steps=-tc.updates_per_call, first=False)
        self.window["steps"] += tc.updates_per_call
        if not self.online_active:
            self.bar.update(tc.updates_per_call)
        if self.due(tc.log_every) or self.due(tc.eval_every) or self.due(tc.checkpoint_every) or self.received:
            self.check_finite()  # never log, evaluate or checkpoint a diverged state
        if self.due(tc.log_every):
            self._log(metrics)
        if self.due(tc.eval_every):
            self.evaluate()
            self.window["t"] = time.perf_counter()  # evaluation time does not count as training speed
        if self.due(tc.checkpoint_every) and not self.online_active:  # online: between rounds only
            self.checkpoint()

    def _log(self, metrics):
        import jax

        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - self.window["t"]
        sps = self.window["steps"] / elapsed if self.window["steps"] and elapsed > 0 else float("nan")
        for d in self.dirs:
            d.log.write(self.step, d.seeds, d.take(metrics), sps)
        if not self.online_active:
            shown = ("critic_loss", "mf_loss", "fm_loss", "actor_q")
            self.bar.set_postfix({"steps/s": f"{sps:.0f}", **{k: f"{np.mean(v):.3g}" for k, v in metrics.items() if k in shown}})
        self.window.update(t=time.perf_counter(), steps=0)


def _offline_phase(p: Program, train_call, args: tuple) -> None:
    """Updates until the step budget, a signal or the wall-clock deadline; at the deadline the step
    reached is evaluated and checkpointed."""
    tc = p.tc
    if p.step and p.due(tc.eval_every):
        p.evaluate(missing_only=True)  # an interrupt had cut this step's evaluation short
    while p.step < tc.steps and not p.received:
        p.one_call(train_call, *args)
        if p.out_of_time():  # after the call: every process makes progress
            break
    if p.step < tc.steps and not p.received:  # out of time: the step reached, evaluated and kept
        p.check_finite()
        if not p.evaluated():
            p.evaluate()
        p.checkpoint()


def _online_phase(p: Program, ds) -> None:
    """Rounds of env steps and updates on balanced batches (`train.online`), evaluated and
    checkpointed at the phase's last step."""
    tc, online, run = p.tc, p.online, p.dirs[0].run
    p.online_active = True
    p.window["first"] = True  # the online call compiles anew
    p.checkpoint()  # the offline phase's end (the online phase may be killed before its first round ends)
    p.progress(tc.online_steps, int(min(online.env_steps, tc.online_steps)),
               f"online {run.agent} {run.task} seeds={[s for d in p.dirs for s in d.seeds]}", unit="env step")
    online_call = make_online_train_call(p.agent, tc.batch_size, tc.updates_per_call, tc.online_ratio)
    run_online(online, tc, lambda: p.one_call(online_call, ds, online.buffers), lambda: p.states,
               p.checkpoint_between_rounds, p.received, p.bar, p.out_of_time)
    if not p.received:  # the end of the online phase: evaluated and checkpointed at its last step
        if not p.evaluated():
            p.check_finite()
            p.evaluate()
        p.check_finite()
        p.checkpoint()


def _run_phases(p: Program, train_call, ds, args: tuple) -> None:
    """The offline phase, then the online one; a signal checkpoints the step reached (offline) or
    keeps the last round's checkpoint (online) and raises `Interrupted`."""
    from steerflow.errors import Interrupted, deferred_signals

    tc, run = p.tc, p.dirs[0].run
    label = ",".join(d.run.task for d in p.dirs)
    p.progress(tc.steps, min(p.step, tc.steps), f"{run.agent} {label} seeds={p.dirs[0].seeds}")
    with deferred_signals() as received:  # SIGINT/SIGTERM: stop after this host call, checkpointed
        p.received = received
        try:
            _offline_phase(p, train_call, args)
            if p.online and p.step >= tc.steps and not received:
                _online_phase(p, ds)
        except EvalStopped:
            pass
        if received:
            p.check_finite()  # the signal may have come after this call's check
            if not p.online_active:  # online: the last checkpoint between rounds stays
                p.checkpoint()
            raise Interrupted(received[0], step=p.saved_step if p.online_active else p.step,
                              total=None if p.online_active else tc.steps, run_dir=p.out)


def _offline_scoring(run: RunSpec, val_data, train_data, tc, discount: float, quiet: bool) -> dict:
    """What an env-less run is scored on: the held-out demos (the training ones when there are none)."""
    from steerflow.data import source
    from steerflow.data.chunks import build_chunk_dataset

    offline = val_data if val_data is not None else train_data
    return {"ds": build_chunk_dataset(offline, tc.horizon, discount),
            "starts": source.offline_eval_starts(offline, tc.horizon),
            "scored_on": source.offline_split(run, val_data, quiet)}


def _train(runs: list[tuple[RunSpec, Path]], out: Path, resume: bool, quiet: bool, kinds=("csv",)) -> dict:
    import jax

    from steerflow.agents.common import EnvSpec
    from steerflow.data import source
    from steerflow.data.chunks import build_chunk_dataset, stack_tasks
    from steerflow.runinfo import atomic_write_json

    has_ckpt = checkpoint_path(out).exists()
    runs = [(_settings(r, o, resume, has_ckpt, quiet), o) for r, o in runs]
    agent, config, tc = [check_run(r) for r, _ in runs][0]  # before the data load: a bad value fails at once
    width = len(runs[0][0].seeds)
    dirs = [RunDir(o, r, source.eval_task(r), slice(None) if len(runs) == 1 else slice(i * width, (i + 1) * width))
            for i, (r, o) in enumerate(runs)]
    run, task = dirs[0].run, dirs[0].task  # task None: an imported dataset scored offline on its held-out demos
    if tc.online_steps and task is None:
        raise ValueError(f"--online-steps with --dataset {run.dataset}: online fine-tuning needs an env to act in; "
                         "name yours with --env MODULE:FACTORY (or an OGBench one with --eval-task)")

    continuing = resume and has_ckpt
    train_data, val_data, data_infos, norm, per_task = _load_program_data(dirs, tc, resume, continuing)
    critic_cfg = getattr(config, "critic", None)
    discount = critic_cfg.discount if critic_cfg else 0.99
    ds = build_chunk_dataset(train_data, tc.horizon, discount)
    args = (ds,)
    if len(dirs) > 1:  # one program over task x seed: each row samples its task's rewards and masks
        ds = stack_tasks(ds, per_task)
        args = (ds, None, jax.numpy.repeat(jax.numpy.arange(len(dirs), dtype=jax.numpy.int32), width))
    layout = ds.layout  # camera keys: observations are packed uint8 rows (steerflow.encoders)
    spec = EnvSpec(obs_dim=int(train_data["observations"].shape[1]) if layout is None else layout.packed_dim,
                   action_dim=int(train_data["actions"].shape[1]), horizon=tc.horizon, obs_layout=layout)
    state = _initial_state(agent, config, spec, dirs, out, continuing, quiet)
    for d, info in zip(dirs, data_infos):
        d.write_files(config, tc, norm, layout, info)
    if len(dirs) > 1:
        atomic_write_json(out / "tasks.json", {"tasks": [d.run.task for d in dirs], "seeds": dirs[0].seeds,
                                               "dirs": [d.out.name for d in dirs]})
    for d in dirs:
        d.open(state[2], kinds, tc)

    held_out = task is None or (run.dataset is not None and val_data is not None)  # imported demos, some held out
    offline = _offline_scoring(run, val_data, train_data, tc, discount, quiet) if held_out else None
    online = None
    if tc.online_steps:
        online = OnlinePhase(agent, task, tc, spec, [s for d in dirs for s in d.seeds], discount, norm)
        restored = load_online(out, online.state_dict()) if continuing else None
        if restored is not None:
            online.load_state_dict(restored)
    p = Program(agent, tc, spec, dirs, out, norm, state, state[2] if continuing else None, online, offline, quiet)
    try:
        _run_phases(p, make_train_call(agent, tc.batch_size, tc.updates_per_call), ds, args)
    finally:
        if p.bar is not None:
            p.bar.close()  # before any error message: it starts on a line of its own
        for d in dirs:
            d.close()
        if online:
            online.close()
    finals = {d.run.task: _final_record(d, tc, p.step, info, online, p.run_start) for d, info in zip(dirs, data_infos)}
    for d in dirs:
        atomic_write_json(d.out / "final.json", finals[d.run.task])
    return finals[run.task] if len(dirs) == 1 else {"tasks": finals}
