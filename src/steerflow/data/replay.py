"""Online replay buffer on the device, and batches mixing it with the offline chunk dataset.

Layout: L lanes (one per online environment) of C slots each, stored flat as rows `l·C + c`, so
that an episode's transitions are consecutive within its lane even though the environments step
together. A lane is a ring: slot `c` holds that lane's transition number `time`, `time mod C = c`.
Per row the buffer keeps the transition (s_t, a_t, r_t, mask_t, s_{t+1}) with the conventions of
`chunks` (r and mask are those of the pre-action state s_t, relabelled as the offline data), its
`episode` id and its `time`.

Validity (docs/algorithms.md#chunk-sampler, for partial trajectories): a start row is valid iff the H rows of its chunk
hold the lane's consecutive transitions `time, …, time+H−1` of one episode. So a chunk never
crosses an episode end, never runs past the newest transition of the episode in progress, and
never mixes a ring's newest rows with the older ones it has not yet overwritten. The flag is kept
per row (`valid`), refreshed around each append, and `sample_replay` draws uniformly from the
valid starts only, so every sample it returns is valid and the agents' losses need no mask.

Batches (`sample_mixed`): `online_ratio < 0` samples uniformly from the union of the offline and
online valid starts (QPILOTS: replay = offline ∪ online); `0 ≤ R ≤ 1` gives round(R·B) online
and the rest offline samples (LPS: 0.5), offline only while no online chunk is complete yet.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from .chunks import ChunkDataset, gather_chunks, sample_chunks


@flax.struct.dataclass
class ReplayBuffer:
    observations: jnp.ndarray  # (L·C, obs_dim)
    actions: jnp.ndarray  # (L·C, A)
    rewards: jnp.ndarray  # (L·C,)
    masks: jnp.ndarray  # (L·C,)
    next_observations: jnp.ndarray  # (L·C, obs_dim)
    episode: jnp.ndarray  # (L·C,) int32 episode id, -1 for a slot never written
    time: jnp.ndarray  # (L·C,) int32 the lane's transition number held, -1 never written
    valid: jnp.ndarray  # (L·C,) bool: a chunk may start here
    count: jnp.ndarray  # (L,) int32 transitions appended per lane so far
    lanes: int = flax.struct.field(pytree_node=False)
    capacity: int = flax.struct.field(pytree_node=False)  # slots per lane C
    horizon: int = flax.struct.field(pytree_node=False)
    discount: float = flax.struct.field(pytree_node=False)

    @property
    def num_valid(self) -> jnp.ndarray:
        return jnp.sum(self.valid.astype(jnp.int32))


def init_replay(lanes: int, capacity: int, obs_dim: int, action_dim: int, horizon: int,
                discount: float) -> ReplayBuffer:
    if capacity < horizon:
        raise ValueError(f"replay capacity {capacity} per lane is below the chunk length H={horizon}")
    n = lanes * capacity
    return ReplayBuffer(
        observations=jnp.zeros((n, obs_dim), jnp.float32), actions=jnp.zeros((n, action_dim), jnp.float32),
        rewards=jnp.zeros((n,), jnp.float32), masks=jnp.zeros((n,), jnp.float32),
        next_observations=jnp.zeros((n, obs_dim), jnp.float32), episode=jnp.full((n,), -1, jnp.int32),
        time=jnp.full((n,), -1, jnp.int32), valid=jnp.zeros((n,), bool), count=jnp.zeros((lanes,), jnp.int32),
        lanes=lanes, capacity=capacity, horizon=horizon, discount=discount)


def _rows(buf: ReplayBuffer, lane: jnp.ndarray, time: jnp.ndarray) -> jnp.ndarray:
    return lane * buf.capacity + jnp.mod(time, buf.capacity)


def _chunk_rows(buf: ReplayBuffer, starts: jnp.ndarray) -> jnp.ndarray:
    """(B, H) rows of the chunks starting at flat rows `starts`, wrapping within each lane."""
    lane, slot = starts // buf.capacity, starts % buf.capacity
    return _rows(buf, lane[:, None], slot[:, None] + jnp.arange(buf.horizon)[None, :])


def _is_valid(buf: ReplayBuffer, starts: jnp.ndarray) -> jnp.ndarray:
    rows = _chunk_rows(buf, starts)
    t0, ep0 = buf.time[starts], buf.episode[starts]
    consecutive = buf.time[rows] == t0[:, None] + jnp.arange(buf.horizon)[None, :]
    return (t0 >= 0) & jnp.all(consecutive & (buf.episode[rows] == ep0[:, None]), axis=1)


def append_chunks(buf: ReplayBuffer, chunk: dict, lengths: jnp.ndarray, episodes: jnp.ndarray) -> ReplayBuffer:
    """Append to every lane l the first `lengths[l]` (0..H) transitions of `chunk` (arrays
    (L, H, …) with the keys of a transition), all of episode `episodes[l]`; then refresh the
    validity of the starts whose chunk overlaps the rows written."""
    L, H = buf.lanes, chunk["rewards"].shape[1]
    k = jnp.arange(H)[None, :]
    times = buf.count[:, None] + k  # (L, H)
    rows = _rows(buf, jnp.arange(L)[:, None], times)
    rows = jnp.where(k < lengths[:, None], rows, L * buf.capacity).reshape(-1)  # out of range: dropped

    def put(dest, values):
        return dest.at[rows].set(values.reshape((L * H,) + dest.shape[1:]).astype(dest.dtype), mode="drop")

    buf = buf.replace(
        observations=put(buf.observations, chunk["observations"]), actions=put(buf.actions, chunk["actions"]),
        rewards=put(buf.rewards, chunk["rewards"]), masks=put(buf.masks, chunk["masks"]),
        next_observations=put(buf.next_observations, chunk["next_observations"]),
        episode=put(buf.episode, jnp.broadcast_to(episodes[:, None], (L, H))), time=put(buf.time, times))
    # starts whose chunk overlaps the written rows: count−H+1 … count+H−1 (their slots mod C)
    around = buf.count[:, None] - buf.horizon + 1 + jnp.arange(2 * buf.horizon - 1)[None, :]
    starts = _rows(buf, jnp.arange(L)[:, None], around).reshape(-1)
    buf = buf.replace(count=buf.count + lengths.astype(jnp.int32))
    return buf.replace(valid=buf.valid.at[starts].set(_is_valid(buf, starts)))


def sample_replay(buf: ReplayBuffer, key: jax.Array, batch_size: int) -> dict:
    """Chunks drawn uniformly from the valid starts (exactly uniform: the i-th valid start is found
    by a search in the running count of valid rows). With no valid start it returns row 0's
    (meaningless) chunk; `sample_mixed` never uses those."""
    cum = jnp.cumsum(buf.valid.astype(jnp.int32))
    pick = jax.random.randint(key, (batch_size,), 0, jnp.maximum(cum[-1], 1))
    starts = jnp.minimum(jnp.searchsorted(cum, pick, side="right"), cum.shape[0] - 1)
    return gather_chunks(buf, _chunk_rows(buf, starts), buf.discount)


def sample_mixed(offline: ChunkDataset, online: ReplayBuffer, key: jax.Array, batch_size: int,
                 online_ratio: float) -> dict:
    """A batch from offline ∪ online (`online_ratio < 0`) or with a fixed online share."""
    k_off, k_on, k_mix = jax.random.split(key, 3)
    off = sample_chunks(offline, k_off, batch_size)
    on = sample_replay(online, k_on, batch_size)
    n_on = online.num_valid
    if online_ratio < 0:  # each sample online with probability n_on / (n_off + n_on): uniform over the union
        u = jax.random.randint(k_mix, (batch_size,), 0, offline.num_starts + n_on)
        take = u >= offline.num_starts
    else:
        take = (jnp.arange(batch_size) < round(online_ratio * batch_size)) & (n_on > 0)
    return jax.tree.map(lambda a, b: jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), b, a), off, on)
