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


def _train(runs: list[tuple[RunSpec, Path]], out: Path, resume: bool, quiet: bool, kinds=("csv",)) -> dict:
    import jax
    from tqdm import tqdm

    from steerflow.agents.common import EnvSpec
    from steerflow.data import source
    from steerflow.data.chunks import build_chunk_dataset, stack_tasks
    from steerflow.errors import Interrupted, deferred_signals
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
    tasks = None
    if len(dirs) > 1:  # one program over task x seed: each row samples its task's rewards and masks
        ds = stack_tasks(ds, per_task)
        tasks = jax.numpy.repeat(jax.numpy.arange(len(dirs), dtype=jax.numpy.int32), width)
    layout = ds.layout  # camera keys: observations are packed uint8 rows (steerflow.encoders)
    spec = EnvSpec(obs_dim=int(train_data["observations"].shape[1]) if layout is None else layout.packed_dim,
                   action_dim=int(train_data["actions"].shape[1]), horizon=tc.horizon, obs_layout=layout)
    seeds = [s for d in dirs for s in d.seeds]
    states, keys, step = _initial_state(agent, config, spec, dirs, out, continuing, quiet)
    for d, info in zip(dirs, data_infos):
        d.write_files(config, tc, norm, layout, info)
    if len(dirs) > 1:
        atomic_write_json(out / "tasks.json", {"tasks": [d.run.task for d in dirs], "seeds": dirs[0].seeds,
                                               "dirs": [d.out.name for d in dirs]})
    for d in dirs:
        d.open(step, kinds, tc)

    train_call = make_train_call(agent, tc.batch_size, tc.updates_per_call)
    policy = make_policy(agent)
    track = make_finite_tracker()
    if task is None:  # offline metric on the held-out demos (the training ones when there are none)
        offline = val_data if val_data is not None else train_data
        offline_ds = build_chunk_dataset(offline, tc.horizon, discount)
        offline_starts = source.offline_eval_starts(offline, tc.horizon)
        scored_on = source.offline_split(run, val_data, quiet)
    online = OnlinePhase(agent, task, tc, spec, seeds, discount, norm) if tc.online_steps else None
    if online and resume and has_ckpt:
        restored = load_online(out, online.state_dict())
        if restored is not None:
            online.load_state_dict(restored)
    run_start = time.perf_counter()
    saved_step = step if resume and has_ckpt else None  # the last good checkpoint on disk
    bad_step, bad_values = jax.numpy.int32(-1), None
    window = {"t": time.perf_counter(), "steps": 0, "first": True}
    label = ",".join(d.run.task for d in dirs)

    def due(every: int) -> bool:
        return step % every == 0 or step == tc.steps

    def evaluated() -> bool:
        return all(d.record is not None and d.record["step"] == step for d in dirs)

    def checkpoint():
        nonlocal saved_step
        if saved_step != step:
            save_checkpoint(out, states, keys, step, **({"online": online.state_dict()} if online_active else {}))
            if len(dirs) > 1:  # each task's directory also holds its own rows, for eval, export and report
                for d in dirs:
                    save_checkpoint(d.out, d.take(states), d.take(keys), step)
            saved_step = step

    def check_finite():
        if bad_values is not None and int(bad_step) >= 0:
            values = jax.device_get(bad_values)
            bad = [d for d in dirs if not all(np.all(np.isfinite(v)) for v in d.take(values).values())]
            errors = [_diverged(d.out, d.run, int(bad_step), d.take(values), saved_step) for d in bad or dirs[:1]]
            raise errors[0]

    def evaluate(received, missing_only: bool = False):
        for d in dirs:
            if not (missing_only and (d.out / "evals" / f"step_{step:08d}.json").exists()):
                evaluate_dir(d, received)

    def evaluate_dir(d: RunDir, received):
        eval_start = time.perf_counter()
        where = "" if len(dirs) == 1 else f" {d.run.task}"
        if d.task is None:
            mse = source.offline_action_mse(agent, states, offline_ds, offline_starts, policy, seed=step)
            d.record = _record_offline_eval(d.out, step, d.seeds, mse, d.run, time.perf_counter() - eval_start,
                                            d.trackers, scored_on)
            bar.write(f"step {step}: {source.offline_metric_name(scored_on)} {d.record['mean']:.4f} per seed "
                      f"{np.round(mse, 4).tolist()}")
            return
        own = d.take(states)
        success, final_reward = evaluate_states(
            agent, own, spec, d.task, tc.eval_episodes, tc.eval_workers, seed=step, policy=source.normalized_policy(policy, norm),
            pool=d.pool, show_progress=not quiet, desc=f"eval at step {step}{where}", should_stop=lambda: bool(received),
            with_final_reward=True)
        rec = d.record_success(step, success, final_reward, time.perf_counter() - eval_start,
                               env_steps=online.counters["env_steps"].tolist() if online_active else None)
        bar.write(f"step {step}{where}: success {rec['mean']:.3f} per seed {np.round(rec['success'], 3).tolist()}")
        from steerflow.video import during_training  # at multiples of video_every (0: never)
        during_training(d.out, tc, step, d.task, source.normalized_policy(policy, norm), own, quiet, lambda: bool(received))
        if online_active:
            online.timing["eval_s"] += time.perf_counter() - eval_start

    def one_call(call, *args):
        """One host call of `updates_per_call` updates (either phase), then its log, evaluation and
        (offline) checkpoint when due."""
        nonlocal states, keys, step, bad_step, bad_values
        states, keys, metrics = call(states, keys, *args)
        step += tc.updates_per_call
        if bad_values is None:
            bad_values = jax.tree.map(jax.numpy.zeros_like, metrics)
        bad_step, bad_values = track(bad_step, bad_values, metrics, step)
        if window["first"]:  # steps/s leaves out the compilation, which the first call includes
            jax.block_until_ready(states)
            window.update(t=time.perf_counter(), steps=-tc.updates_per_call, first=False)
        window["steps"] += tc.updates_per_call
        if not online_active:
            bar.update(tc.updates_per_call)
        if due(tc.log_every) or due(tc.eval_every) or due(tc.checkpoint_every) or received:
            check_finite()  # never log, evaluate or checkpoint a diverged state
        if due(tc.log_every):
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - window["t"]
            sps = window["steps"] / elapsed if window["steps"] and elapsed > 0 else float("nan")
            for d in dirs:
                d.log.write(step, d.seeds, d.take(metrics), sps)
            if not online_active:
                bar.set_postfix({"steps/s": f"{sps:.0f}", **{k: f"{np.mean(v):.3g}" for k, v in metrics.items()
                                                             if k in ("critic_loss", "mf_loss", "fm_loss", "actor_q")}})
            window.update(t=time.perf_counter(), steps=0)
        if due(tc.eval_every):
            evaluate(received)
            window["t"] = time.perf_counter()  # evaluation time does not count as training speed
        if due(tc.checkpoint_every) and not online_active:  # online: between rounds only
            checkpoint()

    deadline = run_start + tc.max_wall_s - process_age()  # `max_wall_s` counts from the process's start

    def out_of_time() -> bool:
        return bool(tc.max_wall_s) and time.perf_counter() >= deadline

    def checkpoint_between_rounds():
        if saved_step is None or step // tc.checkpoint_every > saved_step // tc.checkpoint_every:
            check_finite()
            checkpoint()

    online_active = bool(online) and step >= tc.steps
    bar = tqdm(total=tc.steps, initial=min(step, tc.steps), desc=f"{run.agent} {label} seeds={dirs[0].seeds}",
               disable=quiet, dynamic_ncols=True, smoothing=0.05)
    try:
        with deferred_signals() as received:  # SIGINT/SIGTERM: stop after this host call, checkpointed
            try:
                if step and due(tc.eval_every):
                    evaluate(received, missing_only=True)  # an interrupt had cut this step's evaluation short
                while step < tc.steps and not received:
                    one_call(train_call, *((ds,) if tasks is None else (ds, None, tasks)))
                    if out_of_time():  # after the call: every process makes progress
                        break
                if step < tc.steps and not received:  # out of time: the step reached, evaluated and kept
                    check_finite()
                    if not evaluated():
                        evaluate(received)
                    checkpoint()
                elif online and not received:
                    online_active = True
                    window["first"] = True  # the online call compiles anew
                    checkpoint()  # the offline phase's end (the online phase may be killed before its first round ends)
                    bar.close()
                    bar = tqdm(total=tc.online_steps, initial=int(min(online.env_steps, tc.online_steps)),
                               desc=f"online {run.agent} {run.task} seeds={seeds}", unit="env step",
                               disable=quiet, dynamic_ncols=True, smoothing=0.05)
                    online_call = make_online_train_call(agent, tc.batch_size, tc.updates_per_call, tc.online_ratio)
                    run_online(online, tc, lambda: one_call(online_call, ds, online.buffers), lambda: states,
                               checkpoint_between_rounds, received, bar, out_of_time)
                    if not received:  # the end of the online phase: evaluated and checkpointed at its last step
                        if not evaluated():
                            check_finite()
                            evaluate(received)
                        check_finite()
                        checkpoint()
            except EvalStopped:
                pass
            if received:
                check_finite()  # the signal may have come after this call's check
                if not online_active:  # online: the last checkpoint between rounds stays
                    checkpoint()
                raise Interrupted(received[0], step=saved_step if online_active else step,
                                  total=None if online_active else tc.steps, run_dir=out)
    finally:
        bar.close()  # before any error message: it starts on a line of its own
        for d in dirs:
            d.close()
        if online:
            online.close()
    finals = {d.run.task: _final_record(d, tc, step, info, online, run_start) for d, info in zip(dirs, data_infos)}
    for d in dirs:
        atomic_write_json(d.out / "final.json", finals[d.run.task])
    return finals[run.task] if len(dirs) == 1 else {"tasks": finals}
