"""Valid-start action-chunk sampler (docs/algorithms.md#chunk-sampler), kept on the device and sampled inside `jit`.

Input: a flat transition dataset (OGBench "regular" layout) with `observations (N, obs_dim)`,
`actions (N, A)`, `rewards (N,)`, `masks (N,)`, `next_observations (N, obs_dim)` and
`terminals (N,)` = 1 on the last transition of each trajectory (time-outs, not success).

A start t is valid iff the chunk t..t+H−1 lies inside one trajectory; then s_{t+H} is
`next_observations[t+H−1]`, which also exists for the chunk that ends a trajectory. A sample is
    observations (B, obs_dim) = s_t          actions (B, H·A) = a_{t:t+H} flattened
    rewards (B,) = Σ_{k<H} γ^k r_{t+k}       masks (B,) = min_k mask_{t+k}
    next_observations (B, obs_dim) = s_{t+H}

Image observations (`encoders`): the dataset also holds `frames (F, frame_dim)` uint8 (every
camera key flattened, each recorded frame once) and `frame_index`/`next_frame_index (N,)`, the
frame of s_t and of s_{t+1} per transition; a sample's observations are then the packed uint8 rows
(`ObsLayout.pack`) of the frames at those indices and the low-dim state, built per batch, so the
device holds the frames once, as uint8, and never a float copy of them.
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
    frames: jnp.ndarray | None = None  # (F, frame_dim) uint8, image observations only
    frame_index: jnp.ndarray | None = None  # (N,) int32: the frame of s_t
    next_frame_index: jnp.ndarray | None = None  # (N,) int32: the frame of s_{t+1}
    layout: object = flax.struct.field(pytree_node=False, default=None)  # encoders.ObsLayout

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


def data_layout(data: dict):
    """The `encoders.ObsLayout` of a transition dataset with `image.<key>` frames, else None."""
    shapes = {k[len("image."):]: v.shape[1:] for k, v in data.items() if k.startswith("image.")}
    if not shapes:
        return None
    from steerflow.encoders import ObsLayout

    return ObsLayout.from_shapes(shapes, data["observations"].shape[1])


def build_chunk_dataset(data: dict, horizon: int, discount: float) -> ChunkDataset:
    keys = ("observations", "actions", "rewards", "masks", "next_observations", "terminals")
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"transition dataset lacks keys {missing} (has {sorted(data)})")
    starts = valid_start_indices(data["terminals"], horizon)
    if len(starts) == 0:
        raise ValueError(f"no trajectory is at least H={horizon} transitions long; nothing to sample")
    layout, images = data_layout(data), {}
    if layout is not None:
        images = dict(frames=jnp.asarray(layout.flat_frames({k: data[f"image.{k}"] for k in layout.keys})),
                      frame_index=jnp.asarray(data["frame_index"], jnp.int32),
                      next_frame_index=jnp.asarray(data["next_frame_index"], jnp.int32), layout=layout)
    return ChunkDataset(
        observations=jnp.asarray(data["observations"], jnp.float32),
        actions=jnp.asarray(data["actions"], jnp.float32),
        rewards=jnp.asarray(data["rewards"], jnp.float32),
        masks=jnp.asarray(data["masks"], jnp.float32),
        next_observations=jnp.asarray(data["next_observations"], jnp.float32),
        valid_starts=jnp.asarray(starts),
        horizon=horizon,
        discount=discount,
        **images,
    )


def gather_chunks(data, steps: jnp.ndarray, discount: float, task=None) -> dict:
    """Chunk samples from the rows `steps (B, H)` of `data` (any object with the five transition
    arrays): the offline sampler's rows are t..t+H−1, the replay buffer's wrap around its ring.
    `task`: the row of a multi-task dataset's `rewards (T, N)` and `masks (T, N)` (`stack_tasks`)."""
    discounts = discount ** jnp.arange(steps.shape[1])
    first, last = steps[:, 0], steps[:, -1]
    obs, next_obs = data.observations[first], data.next_observations[last]
    layout = getattr(data, "layout", None)
    if layout is not None:  # packed uint8 rows: the frames at s_t and s_{t+H}, then the state
        obs = layout.pack(data.frames[data.frame_index[first]], obs)
        next_obs = layout.pack(data.frames[data.next_frame_index[last]], next_obs)
    rewards, masks = (data.rewards[steps], data.masks[steps]) if task is None else \
        (data.rewards[task, steps], data.masks[task, steps])  # one gather: no (N,) row is copied per member
    return {
        "observations": obs,
        "actions": data.actions[steps].reshape(steps.shape[0], -1),
        "rewards": jnp.sum(rewards * discounts, axis=-1),
        "masks": jnp.min(masks, axis=-1),
        "next_observations": next_obs,
    }


def chunks_at(ds: ChunkDataset, starts: jnp.ndarray, task=None) -> dict:
    """The chunk samples that begin at the given (valid) start indices (of task row `task`)."""
    return gather_chunks(ds, starts[:, None] + jnp.arange(ds.horizon)[None, :], ds.discount, task)


def sample_chunks(ds: ChunkDataset, key: jax.Array, batch_size: int, task=None) -> dict:
    pick = jax.random.randint(key, (batch_size,), 0, ds.valid_starts.shape[0])
    return chunks_at(ds, ds.valid_starts[pick], task)


def stack_tasks(ds: ChunkDataset, per_task: list[dict]) -> ChunkDataset:
    """A multi-task dataset: `ds`'s observations and actions with the `rewards` and `masks` of each
    task (the tasks of one domain share the play data and differ only in these), as (T, N) arrays
    that `sample_chunks(..., task=t)` reads row t of."""
    return ds.replace(rewards=jnp.stack([jnp.asarray(d["rewards"], jnp.float32) for d in per_task]),
                      masks=jnp.stack([jnp.asarray(d["masks"], jnp.float32) for d in per_task]))
