"""The online phase's interaction with the real environments (docs/algorithms.md#offline-to-online), generic over the agent contract.

S seeds × E environments (`online_envs`) step together in the evaluator's `EnvPool`; the acting
policy is the agent's `act`, called once per chunk for all S·E environments (vmapped over seeds),
its H actions executed open-loop as in evaluation. Each seed has its own replay buffer with one
lane per environment (`data.replay`); rewards and masks are the offline data's
(the env spec's `rewards_masks`: `data.tasks.online_rewards_masks` for an OGBench task,
`envs.gym_env.GymEnvSpec.rewards_masks` for a user's env under the run's `--reward` mode).
The buffers hold what the agent sees, in the run's normalised units (`data.normalization`:
observations standardised, actions in [-1, 1], clipped to ±(1 − 1e-5) as the dataset's are); the
env receives the chunk mapped back into its own action units.

Episodes run in rounds: every environment plays one episode per round, one that ends early waits
for the others (OGBench envs end on success), and the next round resets them all with seeds
derived from (run seed, round, lane). Checkpoints are taken only between rounds, where no episode
is in progress, so that the buffer, the round counter and the keys in the checkpoint restore the
interaction exactly: a resumed run ends as an uninterrupted one does.

Env steps are counted per seed (transitions collected by its E environments); `owed` accumulates
`updates_per_env_step` × the new transitions (mean over seeds, which differ only when episodes end
at different times) and the loop runs a host call of `updates_per_call` updates whenever a whole
call is owed.
"""

from __future__ import annotations

import time

import numpy as np

#: the online interaction's own key stream, apart from the training keys
ACT_STREAM = 0x0411


class OnlinePhase:
    def __init__(self, agent, task, tc, spec, seeds: list[int], discount: float, norm=None):
        import jax
        import jax.numpy as jnp

        from steerflow.data.replay import append_chunks, init_replay
        from steerflow.envs.pool import EnvPool

        self.task, self.tc, self.spec, self.seeds = task, tc, spec, list(seeds)
        self.norm = None if norm is None or norm.is_identity() else norm  # None: env units are the agent's
        self.S, self.E = len(seeds), tc.online_envs
        capacity = tc.replay_capacity or tc.online_steps
        # lanes fill unevenly when episodes end early; one episode of slack per lane
        lane_capacity = -(-capacity // self.E) + task.episode_length
        one = init_replay(self.E, lane_capacity, spec.obs_dim, spec.action_dim, spec.horizon, discount)
        self.buffers = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.S,) + x.shape).copy(), one)
        self.act_keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), ACT_STREAM) for s in seeds])
        self.counters = {"env_steps": np.zeros(self.S, np.int64), "round": 0, "owed": 0.0,
                         "episodes": 0, "successes": 0}
        self.pool = EnvPool(task, self.S * self.E, tc.eval_workers)
        self._act = jax.jit(jax.vmap(agent.act))
        self._append = jax.jit(jax.vmap(append_chunks))
        self.obs = None  # (S·E, obs_dim) while a round is in progress
        self.finished = None
        # wall seconds of this process: stepping the envs, `act`, updates (evaluations left out)
        self.timing = {"env_s": 0.0, "act_s": 0.0, "update_s": 0.0, "eval_s": 0.0}

    # ------------------------------------------------------------------ state in the checkpoint
    def state_dict(self) -> dict:
        c = self.counters
        return {"buffers": self.buffers, "act_keys": self.act_keys, "env_steps": c["env_steps"].copy(),
                "round": np.int64(c["round"]), "owed": np.float64(c["owed"]),
                "episodes": np.int64(c["episodes"]), "successes": np.int64(c["successes"])}

    def load_state_dict(self, d: dict) -> None:
        self.buffers, self.act_keys = d["buffers"], d["act_keys"]
        self.counters = {"env_steps": np.array(d["env_steps"], np.int64), "round": int(d["round"]),
                         "owed": float(d["owed"]), "episodes": int(d["episodes"]),
                         "successes": int(d["successes"])}

    @property
    def env_steps(self) -> float:
        return float(np.mean(self.counters["env_steps"]))

    @property
    def in_round(self) -> bool:
        return self.obs is not None

    # ------------------------------------------------------------------ interaction
    def _reset_seeds(self) -> list[int]:
        r = self.counters["round"]
        return [(1 + s) * 1_000_003 + r * self.E + lane for s in self.seeds for lane in range(self.E)]

    def collect_chunk(self, states) -> None:
        """One `act` for every environment, then its H actions open-loop; appended to the buffers."""
        import jax
        import jax.numpy as jnp

        from steerflow.data.tasks import ACTION_CLIP

        if not self.in_round:
            self.obs = self._agent_obs(self.pool.reset(self._reset_seeds()))
            self.finished = np.zeros(self.S * self.E, bool)
        n, H, A = self.S * self.E, self.spec.horizon, self.spec.action_dim
        split = jax.vmap(jax.random.split)(self.act_keys)
        self.act_keys, subs = split[:, 0], split[:, 1]
        start = time.perf_counter()
        chunks = np.asarray(self._act(states, jnp.asarray(self.obs).reshape(self.S, self.E, -1), subs))
        self.timing["act_s"] += time.perf_counter() - start
        chunks = np.clip(chunks.reshape(n, H, A), -ACTION_CLIP, ACTION_CLIP)
        obs = np.zeros((n, H, self.spec.obs_dim), np.float32)
        next_obs, env_rewards = np.zeros_like(obs), np.zeros((n, H), np.float32)
        successes = np.zeros((n, H), bool)
        env_chunks = chunks if self.norm is None else np.asarray(self.norm.denormalize_action(chunks), np.float32)
        lengths = np.zeros(n, np.int32)
        for k in range(H):
            live = ~self.finished
            if not live.any():
                break
            start = time.perf_counter()
            new_obs, done, success, reward = self.pool.step(env_chunks[:, k], live)
            self.timing["env_s"] += time.perf_counter() - start
            live_ids = np.flatnonzero(live)
            new_obs = self._agent_obs([new_obs[i] for i in live_ids])
            for j, i in enumerate(live_ids):
                obs[i, k], next_obs[i, k], env_rewards[i, k] = self.obs[i], new_obs[j], reward[i]
                successes[i, k] = success[i]
                self.obs[i] = new_obs[j]
            lengths[live] += 1
            ended = live & done
            self.counters["episodes"] += int(ended.sum())
            self.counters["successes"] += int(success[ended].sum())
            self.finished |= ended
        rewards, masks = self.task.rewards_masks(env_rewards, successes)
        chunk = {"observations": obs, "actions": chunks, "rewards": rewards, "masks": masks,
                 "next_observations": next_obs}
        shaped = {k: jnp.asarray(v.reshape((self.S, self.E) + v.shape[1:])) for k, v in chunk.items()}
        episodes = jnp.full((self.S, self.E), self.counters["round"], jnp.int32)
        self.buffers = self._append(self.buffers, shaped, jnp.asarray(lengths.reshape(self.S, self.E)), episodes)
        per_seed = lengths.reshape(self.S, self.E).sum(1)
        self.counters["env_steps"] += per_seed
        self.counters["owed"] += self.tc.updates_per_env_step * float(per_seed.mean())
        if self.finished.all():  # the round is over: the next chunk resets every environment
            self.obs, self.finished = None, None
            self.counters["round"] += 1

    def _agent_obs(self, env_obs) -> np.ndarray:
        """(n, obs_dim) float32 observations in the agent's units."""
        obs = np.asarray(env_obs, np.float32)
        return obs if self.norm is None else np.asarray(self.norm.normalize_obs(obs), np.float32)

    def close(self) -> None:
        self.pool.close()


def run_online(phase: OnlinePhase, tc, one_call, get_states, checkpoint_between_rounds, received, bar,
               out_of_time=lambda: False) -> None:
    """Interact and update until `tc.online_steps` env steps (per seed) are collected, a signal
    arrives, or `out_of_time()` at a round boundary (where a checkpoint resumes bit-identically):
    `one_call()` runs one host call of updates and its bookkeeping (log, evaluation);
    `checkpoint_between_rounds()` is offered each round boundary."""
    import jax

    while phase.env_steps < tc.online_steps and not received and not (out_of_time() and not phase.in_round):
        before = phase.env_steps
        phase.collect_chunk(get_states())
        bar.update(int(min(phase.env_steps, tc.online_steps)) - int(min(before, tc.online_steps)))
        c = phase.counters
        bar.set_postfix_str(f"episodes {c['episodes']}, success so far {c['successes']}/{c['episodes']}"
                            + (f" = {c['successes'] / c['episodes']:.2f}" if c["episodes"] else ""))
        start, eval_before = time.perf_counter(), phase.timing["eval_s"]
        while phase.counters["owed"] >= tc.updates_per_call and not received:
            one_call()
            phase.counters["owed"] -= tc.updates_per_call
        jax.block_until_ready(get_states())  # the updates' time is theirs, not the next act's
        phase.timing["update_s"] += time.perf_counter() - start - (phase.timing["eval_s"] - eval_before)
        if not phase.in_round and not received:
            checkpoint_between_rounds()
