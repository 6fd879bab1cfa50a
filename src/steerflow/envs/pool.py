"""Parallel evaluation with open-loop action chunks (docs/algorithms.md#evaluation-protocol).

All environments step in lock-step; whenever the chunk queue runs out, the policy is called
once for every environment at the same time (`policy(obs (n, obs_dim)) -> (n, H·A)`), and the
H actions are executed open-loop. An episode ends on the env's own termination or TimeLimit;
success is `info['success']` at that last step. Envs are built by their spec's `make()`
(`steerflow.envs`: an OGBench task or a user's Gymnasium env). Environments live in worker processes
(`workers > 0`, 'spawn' so the JAX parent is never forked) or in this process (`workers = 0`).
Workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and only the parent
decides what to do with it (the trainer checkpoints and closes the pool).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Callable

import numpy as np

from steerflow.data.tasks import TaskSpec


class _LocalEnvs:
    """A list of single-task envs stepped in this process."""

    def __init__(self, spec: TaskSpec, count: int):
        self.envs = [spec.make() for _ in range(count)]

    def reset(self, seeds: list[int]) -> np.ndarray:
        return np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)])

    def step(self, actions: np.ndarray, active: np.ndarray):
        obs, done, success, reward = [], [], [], []
        for env, action, live in zip(self.envs, actions, active):
            if not live:  # finished episodes are not stepped again
                obs.append(None), done.append(True), success.append(False), reward.append(0.0)
                continue
            space = env.action_space  # OGBench's is [-1, 1]; a user's env its own units
            o, r, terminated, truncated, info = env.step(np.clip(action, space.low, space.high))
            obs.append(o), done.append(terminated or truncated), success.append(bool(info.get("success", False)))
            reward.append(float(r))
        return obs, np.array(done), np.array(success), np.array(reward, np.float32)

    def close(self):
        for env in self.envs:
            env.close()


def _worker(conn, spec: TaskSpec, count: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from steerflow import gl

    gl.settle()
    envs = _LocalEnvs(spec, count)
    while True:
        try:
            cmd, payload = conn.recv()
        except EOFError:  # the pool's process ended without closing it (killed, interrupted): end quietly
            cmd = "close"
        if cmd == "reset":
            conn.send(envs.reset(payload))
        elif cmd == "step":
            conn.send(envs.step(*payload))
        else:
            envs.close()
            conn.close()
            return


class EnvPool:
    """`num_envs` copies of a single-task env, spread over `workers` processes (~200 MB each)."""

    def __init__(self, spec: TaskSpec, num_envs: int, workers: int = 0):
        self.spec, self.num_envs = spec, num_envs
        workers = min(workers, num_envs)
        self.split = np.array_split(np.arange(num_envs), max(workers, 1))
        if workers <= 0:
            self.local, self.conns, self.procs = _LocalEnvs(spec, num_envs), [], []
            return
        self.local = None
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        from steerflow.errors import children_ignore_sigint

        for part in self.split:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, spec, len(part)), daemon=True)
            with children_ignore_sigint():
                proc.start()
            self.conns.append(parent), self.procs.append(proc)

    def reset(self, seeds: list[int]) -> np.ndarray:
        if self.local:
            return self.local.reset(seeds)
        for conn, part in zip(self.conns, self.split):
            conn.send(("reset", [seeds[i] for i in part]))
        return np.concatenate([conn.recv() for conn in self.conns])

    def step(self, actions: np.ndarray, active: np.ndarray):
        """Step the `active` envs: (obs list, done, success, reward) with None, True, False, 0 for
        the others; reward and success are those of the pre-action state (single-task OGBench envs
        use `success_timing='pre'`), i.e. the offline relabelling's r_t."""
        if self.local:
            return self.local.step(actions, active)
        for conn, part in zip(self.conns, self.split):
            conn.send(("step", (actions[part], active[part])))
        results = [conn.recv() for conn in self.conns]
        obs = [o for r in results for o in r[0]]
        return (obs, *(np.concatenate([r[i] for r in results]) for i in (1, 2, 3)))

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):  # the worker is gone already
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        if self.local:
            self.local.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_episodes(pool: EnvPool, policy: Callable[[np.ndarray], np.ndarray], horizon: int,
                 episodes: int, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict:
    """Run `episodes` episodes in waves of `pool.num_envs` (an OGBench env holds ~200 MB, so the
    pool is kept small); returns per-episode success, length and `final_reward`, the single-task
    reward of the last state (OGBench's #satisfied − #sub-goals: 0 iff solved, −(sub-goals left)
    otherwise), which shows progress below the success threshold. Episode i resets with seed
    `seed·100003 + i`, so results do not depend on the pool size or the worker count.
    `progress(finished, successes)` is called whenever episodes finish. A non-finite action chunk
    for an active episode raises FloatingPointError naming the episode, instead of reaching the env."""
    success = np.zeros(episodes, bool)
    length = np.zeros(episodes, int)
    final_reward = np.zeros(episodes, np.float32)
    for first in range(0, episodes, pool.num_envs):
        n = min(pool.num_envs, episodes - first)
        seeds = [seed * 100_003 + first + i for i in range(pool.num_envs)]
        obs = pool.reset(seeds)
        active = np.arange(pool.num_envs) < n  # the last wave may leave envs idle
        while active.any():
            chunks = np.asarray(policy(obs)).reshape(len(obs), horizon, -1)
            if not np.isfinite(chunks[active]).all():  # MuJoCo would take NaN controls and go on silently
                bad = int(np.flatnonzero(active & ~np.isfinite(chunks).all(axis=(1, 2)))[0])
                raise FloatingPointError(f"the policy returned a non-finite action chunk for episode {first + bad} "
                                         f"(reset seed {seeds[bad]}) at step {length[first + bad]}")
            for k in range(horizon):
                new_obs, done, step_success, step_reward = pool.step(chunks[:, k], active)
                for i in np.flatnonzero(active):
                    obs[i] = new_obs[i]
                    length[first + i] += 1
                    final_reward[first + i] = step_reward[i]
                    if done[i]:
                        success[first + i] = step_success[i]
                finished = np.flatnonzero(active & done)
                if progress is not None and len(finished):
                    progress(len(finished), int(step_success[finished].sum()))
                active &= ~done
                if not active.any():
                    break
    return {"success": success, "length": length, "final_reward": final_reward}
