"""The training loop of a run directory (see `steerflow.train` for its layout)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from steerflow.errors import EvalStopped

from .checkpoint import load_checkpoint, load_online, save_checkpoint
from .core import make_finite_tracker, make_online_train_call, make_policy, make_train_call
from .evaluation import (_record_eval, _record_offline_eval, copy_curves, drop_evals_after,
                         evaluate_states)
from .metrics import MetricsLog
from .online import OnlinePhase, run_online
from .presets import RunSpec, check_run, from_spec, resume_spec


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
    """Train every seed of `run` in this process (vmapped) and return the final record. A run
    directory this call created is removed again when it fails before its first checkpoint (a
    diverged run keeps it: `failed.json` says what happened). `log`: the trackers (csv,
    tensorboard, wandb; `steerflow.tracking`) that receive the metrics and evaluations as written."""
    from steerflow.errors import TrainingDiverged
    from steerflow.runlock import remove_partial_files

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory (it must be a directory)")
    created = make_run_dir(out)
    with run_lock(out):  # the directory is this process's until it returns (a second writer is refused)
        try:
            remove_partial_files(out, "checkpoints")  # of a killed run: nobody else writes here now
            return _train(run, out, resume, quiet, log)
        except TrainingDiverged:
            raise
        except BaseException:
            if created and out.is_dir() and not (out / "checkpoints" / "latest.msgpack").exists():
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


def _initial_state(agent, config, spec, run: RunSpec, out: Path, continuing: bool, quiet: bool):
    """(states, keys, step), every seed vmapped: fresh (with `--base-from`'s frozen base), the
    offline run `--from` continues, or this run's own checkpoint on `--resume`."""
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
    if continuing:
        states, keys, step = load_checkpoint(out, states, keys)
        if not quiet:
            print(f"resuming {out} from step {step}")
    return states, keys, step


def _write_run_files(out: Path, run: RunSpec, config, tc, norm, layout, data_info: dict) -> None:
    """The run's settings and provenance, written after its checkpoint was read (a bad one leaves
    the run as it was): normalisation and image layout (what evaluation and `policy.load` apply),
    config.json, run_info.json."""
    from steerflow.config import to_dict
    from steerflow.data import normalization
    from steerflow.encoders import save_layout
    from steerflow.runinfo import atomic_write_json, device_description, git_commit, library_versions

    out.mkdir(parents=True, exist_ok=True)
    normalization.save(out, norm)
    save_layout(out, layout)
    atomic_write_json(out / "config.json", {"run": dataclasses.asdict(run), "agent_config": to_dict(config),
                                            "train_config": to_dict(tc)})
    atomic_write_json(out / "run_info.json", {
        "commit": git_commit(), "versions": library_versions(), "device": device_description(),
        "dataset": data_info, "command": " ".join(sys.argv)})


def _final_record(out: Path, run: RunSpec, tc, step: int, record: dict | None, data_info: dict, online,
                  run_start: float) -> dict:
    """final.json: the last evaluation (read back when a finished run was resumed), the online
    phase's counters, a wall-clock stop, and the provenance."""
    from steerflow.runinfo import device_description, git_commit

    seeds = list(run.seeds)
    last = step
    if record is None:  # resumed a run that had already finished
        last = max(int(f.stem.split("_")[1]) for f in (out / "evals").glob("step_*.json"))
        record = json.loads((out / "evals" / f"step_{last:08d}.json").read_text())
    final = {"agent": run.agent, "task": run.task, "preset": run.preset, "steps": last, "seeds": seeds,
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


def _train(run: RunSpec, out: Path, resume: bool, quiet: bool, kinds=("csv",)) -> dict:
    import jax
    from tqdm import tqdm

    from steerflow.agents.common import EnvSpec
    from steerflow.data import source
    from steerflow.data.chunks import build_chunk_dataset
    from steerflow.evaluate import EnvPool
    from steerflow.errors import Interrupted, deferred_signals
    from steerflow.runinfo import atomic_write_json
    from steerflow.tracking import Trackers

    config_path = out / "config.json"
    has_ckpt = (out / "checkpoints" / "latest.msgpack").exists()
    if run.from_run:
        run = from_spec(run)  # the offline phase is that run's
    if resume and config_path.exists():
        run = resume_spec(config_path, run, quiet)  # the stored settings (steps possibly raised)
    elif has_ckpt and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    agent, config, tc = check_run(run)  # before the data load: a bad value fails at once
    task = source.eval_task(run)  # None: an imported dataset scored offline on its held-out demos
    if tc.online_steps and task is None:
        raise ValueError(f"--online-steps with --dataset {run.dataset}: online fine-tuning needs an env to act in; "
                         "name yours with --env MODULE:FACTORY (or an OGBench one with --eval-task)")

    continuing = resume and has_ckpt
    train_data, val_data, data_info, norm = _load_data(run, tc, out, resume, continuing)
    critic_cfg = getattr(config, "critic", None)
    discount = critic_cfg.discount if critic_cfg else 0.99
    ds = build_chunk_dataset(train_data, tc.horizon, discount)
    layout = ds.layout  # camera keys: observations are packed uint8 rows (steerflow.encoders)
    spec = EnvSpec(obs_dim=int(train_data["observations"].shape[1]) if layout is None else layout.packed_dim,
                   action_dim=int(train_data["actions"].shape[1]), horizon=tc.horizon, obs_layout=layout)
    seeds = list(run.seeds)
    states, keys, step = _initial_state(agent, config, spec, run, out, continuing, quiet)
    _write_run_files(out, run, config, tc, norm, layout, data_info)
    trackers = Trackers(out, kinds, step)  # `--log`: fed each record below as it is written
    log = MetricsLog(out / "metrics.csv", step, trackers)
    drop_evals_after(out, step)  # evaluations after the checkpoint are redone, identically
    (out / "failed.json").unlink(missing_ok=True)  # a resumed run starts over from its last good checkpoint

    train_call = make_train_call(agent, tc.batch_size, tc.updates_per_call)
    policy = make_policy(agent)
    track = make_finite_tracker()
    pool = EnvPool(task, min(tc.eval_episodes, tc.eval_envs), tc.eval_workers) if task else None
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
    record = None
    run_start = time.perf_counter()
    saved_step = step if resume and has_ckpt else None  # the last good checkpoint on disk
    bad_step, bad_values = jax.numpy.int32(-1), None
    window = {"t": time.perf_counter(), "steps": 0, "first": True}

    def due(every: int) -> bool:
        return step % every == 0 or step == tc.steps

    def checkpoint():
        nonlocal saved_step
        if saved_step != step:
            save_checkpoint(out, states, keys, step, **({"online": online.state_dict()} if online_active else {}))
            saved_step = step

    def check_finite():
        if bad_values is not None and int(bad_step) >= 0:
            raise _diverged(out, run, int(bad_step), jax.device_get(bad_values), saved_step)

    def evaluate(received) -> dict:
        eval_start = time.perf_counter()
        if task is None:
            mse = source.offline_action_mse(agent, states, offline_ds, offline_starts, policy, seed=step)
            rec = _record_offline_eval(out, step, seeds, mse, run, time.perf_counter() - eval_start, trackers,
                                       scored_on)
            bar.write(f"step {step}: {source.offline_metric_name(scored_on)} {rec['mean']:.4f} per seed "
                      f"{np.round(mse, 4).tolist()}")
            return rec
        success, final_reward = evaluate_states(
            agent, states, spec, task, tc.eval_episodes, tc.eval_workers, seed=step, policy=source.normalized_policy(policy, norm),
            pool=pool, show_progress=not quiet, desc=f"eval at step {step}", should_stop=lambda: bool(received),
            with_final_reward=True)
        rec = _record_eval(out, step, seeds, success, run, eval_s=time.perf_counter() - eval_start,
                           env_steps=online.counters["env_steps"].tolist() if online_active else None,
                           final_reward=final_reward, trackers=trackers)
        bar.write(f"step {step}: success {rec['mean']:.3f} per seed {np.round(rec['success'], 3).tolist()}")
        from steerflow.video import during_training  # at multiples of video_every (0: never)
        during_training(out, tc, step, task, source.normalized_policy(policy, norm), states, quiet, lambda: bool(received))
        if online_active:
            online.timing["eval_s"] += time.perf_counter() - eval_start
        return rec

    def one_call(call, *args):
        """One host call of `updates_per_call` updates (either phase), then its log, evaluation and
        (offline) checkpoint when due."""
        nonlocal states, keys, step, bad_step, bad_values, record
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
            log.write(step, seeds, metrics, sps)
            if not online_active:
                bar.set_postfix({"steps/s": f"{sps:.0f}", **{k: f"{np.mean(v):.3g}" for k, v in metrics.items()
                                                             if k in ("critic_loss", "mf_loss", "fm_loss", "actor_q")}})
            window.update(t=time.perf_counter(), steps=0)
        if due(tc.eval_every):
            record = evaluate(received)
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
    bar = tqdm(total=tc.steps, initial=min(step, tc.steps), desc=f"{run.agent} {run.task} seeds={seeds}",
               disable=quiet, dynamic_ncols=True, smoothing=0.05)
    try:
        with deferred_signals() as received:  # SIGINT/SIGTERM: stop after this host call, checkpointed
            try:
                if step and due(tc.eval_every) and not (out / "evals" / f"step_{step:08d}.json").exists():
                    record = evaluate(received)  # an interrupt had cut this step's evaluation short
                while step < tc.steps and not received:
                    one_call(train_call, ds)
                    if out_of_time():  # after the call: every process makes progress
                        break
                if step < tc.steps and not received:  # out of time: the step reached, evaluated and kept
                    check_finite()
                    if record is None or record["step"] != step:
                        record = evaluate(received)
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
                        if record is None or record["step"] != step:
                            check_finite()
                            record = evaluate(received)
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
        trackers.close()
        if pool is not None:
            pool.close()
        if online:
            online.close()
    final = _final_record(out, run, tc, step, record, data_info, online, run_start)
    atomic_write_json(out / "final.json", final)
    return final
