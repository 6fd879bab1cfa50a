"""The jitted core: `train_call` (a `lax.scan` of vmapped sample → update), the acting policy and
the on-device non-finite tracker."""

from __future__ import annotations


def make_train_call(agent, batch_size: int, updates_per_call: int):
    """jit(scan over `updates_per_call` of vmap-over-seeds(sample → update)): `train_call(states,
    keys, ds, tasks=None)` with batches from the offline chunk dataset; `tasks (R,)` int32, for a
    multi-task dataset (`data.chunks.stack_tasks`), the task row of each of the R vmapped states.

    The dataset is an argument, not a closure constant, so it stays one device buffer instead of
    being baked into the compiled program."""
    from steerflow.data.chunks import sample_chunks

    return _scanned_updates(agent, updates_per_call,
                            lambda ds, replay, key, task: sample_chunks(ds, key, batch_size, task))


def make_online_train_call(agent, batch_size: int, updates_per_call: int, online_ratio: float):
    """The online phase's `train_call(states, keys, ds, replays)`: the same scan, with batches that
    mix the offline dataset and each seed's replay buffer (`replays` vmapped over seeds) as
    `data.replay.sample_mixed` does."""
    from steerflow.data.replay import sample_mixed

    return _scanned_updates(agent, updates_per_call,
                            lambda ds, replay, key, task: sample_mixed(ds, replay, key, batch_size, online_ratio))


def _scanned_updates(agent, updates_per_call: int, sample):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def train_call(states, keys, ds, replays=None, tasks=None):
        def one_seed(state, key, replay, task):
            key, k_batch = jax.random.split(key)
            state, metrics = agent.update(state, sample(ds, replay, k_batch, task))
            return state, key, metrics

        def body(carry, _):
            states, keys = carry
            states, keys, metrics = jax.vmap(one_seed)(states, keys, replays, tasks)
            return (states, keys), metrics

        (states, keys), metrics = jax.lax.scan(body, (states, keys), None, length=updates_per_call)
        return states, keys, jax.tree.map(lambda m: jnp.mean(m, 0), metrics)

    return train_call


def make_policy(agent):
    """jit(act) for one seed's state: obs (E, obs_dim) → chunks (E, d)."""
    import jax

    return jax.jit(agent.act)


def make_finite_tracker():
    """jit((bad_step, bad_values, metrics, step) → same): the first host call whose metrics hold a
    NaN or inf, and its metrics, kept on the device so that the loop never waits for it."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def track(bad_step, bad_values, metrics, step):
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
        first = (bad_step < 0) & ~ok
        return jnp.where(first, step, bad_step), jax.tree.map(lambda a, b: jnp.where(first, b, a), bad_values, metrics)

    return track
