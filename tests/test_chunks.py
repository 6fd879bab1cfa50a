"""The valid-start chunk sampler on synthetic trajectories (SPEC §1.2)."""

import jax
import numpy as np
import pytest

from steerflow.data.chunks import build_chunk_dataset, chunks_at, sample_chunks, valid_start_indices


def synthetic(lengths, obs_dim=2, action_dim=3, seed=0):
    """Trajectories whose observations encode (trajectory id, time) so crossings are visible."""
    rng = np.random.default_rng(seed)
    obs, nxt, acts, rew, masks, terms = [], [], [], [], [], []
    for traj, n in enumerate(lengths):
        t = np.arange(n)
        obs.append(np.stack([np.full(n, traj), t], 1).astype(np.float32))
        nxt.append(np.stack([np.full(n, traj), t + 1], 1).astype(np.float32))
        acts.append(np.stack([np.full(n, traj), t, rng.uniform(-1, 1, n)], 1).astype(np.float32))
        rew.append(rng.uniform(-1, 0, n).astype(np.float32))
        masks.append((rng.uniform(size=n) > 0.3).astype(np.float32))
        terms.append((t == n - 1).astype(np.float32))
    cat = lambda xs: np.concatenate(xs)
    return {"observations": cat(obs), "next_observations": cat(nxt), "actions": cat(acts),
            "rewards": cat(rew), "masks": cat(masks), "terminals": cat(terms)}


def test_valid_starts_exact():
    terminals = np.zeros(12)
    terminals[[3, 5, 11]] = 1  # trajectories [0..3], [4..5], [6..11]
    np.testing.assert_array_equal(valid_start_indices(terminals, 3), [0, 1, 6, 7, 8, 9])
    # a dataset cut mid-trajectory: the tail counts as a trajectory
    np.testing.assert_array_equal(valid_start_indices(np.array([0, 0, 0, 1, 0, 0]), 2), [0, 1, 2, 4])


@pytest.mark.parametrize("horizon", [1, 3, 5])
def test_chunks_never_cross_a_trajectory_and_sums_are_exact(horizon):
    data = synthetic([7, 2, 11, 5, 4], action_dim=3)
    gamma = 0.9
    ds = build_chunk_dataset(data, horizon, gamma)
    batch = jax.device_get(sample_chunks(ds, jax.random.PRNGKey(0), 4096))
    acts = batch["actions"].reshape(4096, horizon, 3)
    traj, t0 = batch["observations"][:, 0], batch["observations"][:, 1]
    # every action of the chunk and s_{t+H} belong to the start's trajectory, consecutively
    assert np.all(acts[:, :, 0] == traj[:, None])
    np.testing.assert_array_equal(acts[:, :, 1], t0[:, None] + np.arange(horizon))
    np.testing.assert_array_equal(batch["next_observations"][:, 0], traj)
    np.testing.assert_array_equal(batch["next_observations"][:, 1], t0 + horizon)
    # R and m against a brute-force computation from the flat arrays
    starts = np.asarray(ds.valid_starts)
    exact = {s: (sum(gamma**k * data["rewards"][s + k] for k in range(horizon)),
                 min(data["masks"][s + k] for k in range(horizon))) for s in starts}
    index = {(o[0], o[1]): s for s, o in zip(range(len(data["observations"])), data["observations"])}
    for i in range(4096):
        s = index[(traj[i], t0[i])]
        assert s in exact
        np.testing.assert_allclose(batch["rewards"][i], exact[s][0], rtol=1e-5)
        assert batch["masks"][i] == exact[s][1]
    # every valid start is reachable; the 2-step trajectory only when H <= 2
    assert len(np.unique(t0 + 1000 * traj)) == len(starts)
    assert (1 in traj) == (horizon <= 2)


def test_chunk_that_ends_a_trajectory_uses_its_final_next_observation():
    data = synthetic([4, 6])
    ds = build_chunk_dataset(data, 4, 0.99)
    batch = jax.device_get(chunks_at(ds, np.array([0], np.int32)))
    np.testing.assert_array_equal(batch["next_observations"][0], [0, 4])  # s_4 of trajectory 0


def test_missing_keys_and_short_data_are_named():
    data = synthetic([3])
    with pytest.raises(KeyError, match="masks"):
        build_chunk_dataset({k: v for k, v in data.items() if k != "masks"}, 2, 0.99)
    with pytest.raises(ValueError, match="H=5"):
        build_chunk_dataset(data, 5, 0.99)
