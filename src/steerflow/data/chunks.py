"""Valid-start action-chunk sampler (SPEC §1.2), kept on the device and sampled inside `jit`.

Input: a flat transition dataset (OGBench "regular" layout) with `observations (N, obs_dim)`,
`actions (N, A)`, `rewards (N,)`, `masks (N,)`, `next_observations (N, obs_dim)` and
`terminals (N,)` = 1 on the last transition of each trajectory (time-outs, not success).

A start t is valid iff the chunk t..t+H−1 lies inside one trajectory; then s_{t+H} is
`next_observations[t+H−1]`, which also exists for the chunk that ends a trajectory. A sample is
    observations (B, obs_dim) = s_t          actions (B, H·A) = a_{t:t+H} flattened
    rewards (B,) = Σ_{k<H} γ^k r_{t+k}       masks (B,) = min_k mask_{t+k}
    next_observations (B, obs_dim) = s_{t+H}
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class ChunkDataset:
    observations: jnp.ndarray
    actions: jnp.ndarray
    rewards: jnp.ndarray
    masks: jnp.ndarray
    next_observations: jnp.ndarray
    valid_starts: jnp.ndarray  # (M,) int32 start indices
    horizon: int = flax.struct.field(pytree_node=False)
    discount: float = flax.struct.field(pytree_node=False)

    @property
    def num_starts(self) -> int:
        return int(self.valid_starts.shape[0])


def valid_start_indices(terminals: np.ndarray, horizon: int) -> np.ndarray:
    """Starts t whose chunk t..t+H−1 ends no later than its trajectory's last transition."""
    n = len(terminals)
    ends = np.flatnonzero(np.asarray(terminals) > 0)
    if len(ends) == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)  # a dataset that stops mid-trajectory ends one there
    starts = np.concatenate([[0], ends[:-1] + 1])
    pieces = [np.arange(s, e - horizon + 2) for s, e in zip(starts, ends) if e - s + 1 >= horizon]
    return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros((0,), np.int32)


def build_chunk_dataset(data: dict, horizon: int, discount: float) -> ChunkDataset:
    keys = ("observations", "actions", "rewards", "masks", "next_observations", "terminals")
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"transition dataset lacks keys {missing} (has {sorted(data)})")
    starts = valid_start_indices(data["terminals"], horizon)
    if len(starts) == 0:
        raise ValueError(f"no trajectory is at least H={horizon} transitions long; nothing to sample")
    return ChunkDataset(
        observations=jnp.asarray(data["observations"], jnp.float32),
        actions=jnp.asarray(data["actions"], jnp.float32),
        rewards=jnp.asarray(data["rewards"], jnp.float32),
        masks=jnp.asarray(data["masks"], jnp.float32),
        next_observations=jnp.asarray(data["next_observations"], jnp.float32),
        valid_starts=jnp.asarray(starts),
        horizon=horizon,
        discount=discount,
    )


def gather_chunks(data, steps: jnp.ndarray, discount: float) -> dict:
    """Chunk samples from the rows `steps (B, H)` of `data` (any object with the five transition
    arrays): the offline sampler's rows are t..t+H−1, the replay buffer's wrap around its ring."""
    discounts = discount ** jnp.arange(steps.shape[1])
    return {
        "observations": data.observations[steps[:, 0]],
        "actions": data.actions[steps].reshape(steps.shape[0], -1),
        "rewards": jnp.sum(data.rewards[steps] * discounts, axis=-1),
        "masks": jnp.min(data.masks[steps], axis=-1),
        "next_observations": data.next_observations[steps[:, -1]],
    }


def chunks_at(ds: ChunkDataset, starts: jnp.ndarray) -> dict:
    """The chunk samples that begin at the given (valid) start indices."""
    return gather_chunks(ds, starts[:, None] + jnp.arange(ds.horizon)[None, :], ds.discount)


def sample_chunks(ds: ChunkDataset, key: jax.Array, batch_size: int) -> dict:
    pick = jax.random.randint(key, (batch_size,), 0, ds.valid_starts.shape[0])
    return chunks_at(ds, ds.valid_starts[pick])
