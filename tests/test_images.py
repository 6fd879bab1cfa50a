"""Image observations: the packed uint8 row, the IMPALA-style encoder in front of every network
(per network or one shared), the sampler's frames gathered by index, a CLI training run on an
imported robomimic file with a camera key whose loaded policy acts on raw frames, and a visual
OGBench dataset rendered from a generated state dataset (frames equal a fresh render of the state)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerflow import cli, encoders
from steerflow.agents import get_agent
from steerflow.agents.common import EnvSpec
from steerflow.config import apply_overrides
from steerflow.demos import writers as ex
from steerflow.data import imports
from steerflow.data.chunks import build_chunk_dataset, sample_chunks
from steerflow.encoders import ObsLayout

LAYOUT = ObsLayout.from_shapes({"wrist": (16, 16, 1), "front": (16, 16, 3)}, 7)


def _rows(rng, batch, layout=LAYOUT):
    frames = {k: rng.integers(0, 256, (batch, *shape), dtype=np.uint8) for k, shape in layout.images}
    state = rng.standard_normal((batch, layout.state_dim)).astype(np.float32)
    return frames, state, layout.pack(layout.flat_frames(frames), state)


def test_packed_rows_round_trip_exactly_and_frames_stay_uint8_up_to_the_encoder():
    rng = np.random.default_rng(0)
    frames, state, rows = _rows(rng, 5)
    assert rows.dtype == np.uint8 and rows.shape == (5, LAYOUT.packed_dim) == (5, 16 * 16 * 4 + 4 * 7)
    assert LAYOUT.keys == ["front", "wrist"]  # sorted: the channel order of the concatenated cameras
    images, back = LAYOUT.unpack(jnp.asarray(rows))
    np.testing.assert_array_equal(back, state)  # the float32 state's bytes, bit-cast back
    np.testing.assert_array_equal(images, np.concatenate([frames["front"], frames["wrist"]], -1))
    np.testing.assert_array_equal(LAYOUT.pack(jnp.asarray(LAYOUT.flat_frames(frames)), jnp.asarray(state)), rows)

    net = encoders.ObsEncoder(LAYOUT, encoders.EncoderConfig(arch="impala-debug", dense=24))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, LAYOUT.packed_dim)))
    apply = jax.jit(net.apply)
    out = apply(params, jnp.asarray(rows))
    assert out.shape == (5, 24 + 7) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out[:, 24:], state)  # the low-dim state is concatenated as it is
    # the frames reach the jitted encoder as uint8 and are cast inside it (no float copy on the host)
    jaxpr = jax.make_jaxpr(lambda r: net.apply(params, r))(jnp.asarray(rows))
    assert jaxpr.in_avals[-1].dtype == jnp.uint8
    assert any(e.primitive.name == "convert_element_type" and e.invars[0].aval.dtype == jnp.uint8
               and e.outvars[0].aval.dtype == jnp.float32 for e in jaxpr.jaxpr.eqns[:12])
    # a changed pixel changes the embedding (the frames are read)
    rows2 = rows.copy()
    rows2[0, :50] = 255 - rows2[0, :50]
    assert not np.allclose(apply(params, jnp.asarray(rows2))[0], out[0])
    with pytest.raises(ValueError, match="one height and width"):
        ObsLayout.from_shapes({"a": (16, 16, 3), "b": (32, 32, 3)}, 0)
    with pytest.raises(ValueError, match="image key 'wrist' missing"):
        LAYOUT.flat_frames({"front": frames["front"]})


def test_tied_gradients_are_the_shared_encoders_gradient():
    grads = {"a": {"params": {"encoder": {"w": jnp.ones(3)}, "net": {"w": jnp.ones(2)}}},
             "b": {"params": {"encoder": {"w": 2 * jnp.ones(3)}, "net": {"w": jnp.ones(2)}}}, "log_temp": jnp.ones(())}
    tied = encoders.tie_gradients(grads)
    for name in ("a", "b"):  # d/dθ f(θ, θ) = ∂1 f + ∂2 f, applied to each copy
        np.testing.assert_array_equal(tied[name]["params"]["encoder"]["w"], 3 * np.ones(3))
        np.testing.assert_array_equal(tied[name]["params"]["net"]["w"], np.ones(2))
    assert tied["log_temp"] is grads["log_temp"]


def _lps(share: bool):
    agent = get_agent("lps")
    config = apply_overrides(agent.Config(), {"*.hidden": (16, 16), "actor_hidden": (16, 16), "encoder.arch": "impala-debug",
                                              "encoder.dense": 8, "encoder.share": share})
    return agent, config, EnvSpec(LAYOUT.packed_dim, 2, 2, obs_layout=LAYOUT)


def test_each_network_has_its_encoder_or_one_shared_set_of_weights():
    names = ["actor", "base", "critic"]

    def equal(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    agent, config, spec = _lps(share=False)  # OGBench's choice: one encoder per network, drawn independently
    own = agent.init(jax.random.PRNGKey(0), spec, config).params
    assert not equal(own["actor"]["params"]["encoder"], own["critic"]["params"]["encoder"])
    agent, config, spec = _lps(share=True)
    state = agent.init(jax.random.PRNGKey(0), spec, config)
    enc = {n: state.params[n]["params"]["encoder"] for n in names}
    assert equal(enc["actor"], enc["base"]) and equal(enc["base"], enc["critic"])
    assert equal(state.target_params["critic"]["params"]["encoder"], enc["critic"])
    rng = np.random.default_rng(1)
    rows = jnp.asarray(_rows(rng, 8)[2])
    batch = {"observations": rows, "next_observations": rows[::-1], "actions": jnp.asarray(rng.uniform(-1, 1, (8, 4)), jnp.float32),
             "rewards": -jnp.ones(8), "masks": jnp.ones(8)}
    update = jax.jit(agent.update)
    new = state
    for _ in range(2):
        new, metrics = update(new, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    after = {n: new.params[n]["params"]["encoder"] for n in names}
    assert not equal(enc["critic"], after["critic"])  # it trains...
    assert equal(after["actor"], after["base"]) and equal(after["base"], after["critic"])  # ...as one set of weights
    assert not equal(new.target_params["critic"]["params"]["encoder"], after["critic"])  # Polyak, not a copy


def test_the_sampler_gathers_uint8_frames_at_the_obs_and_next_obs_indices():
    rng = np.random.default_rng(2)
    layout = ObsLayout.from_shapes({"cam": (8, 8, 3)}, 3)
    eps = [{"observations": rng.standard_normal((t, 3)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (t, 2)).astype(np.float32),
            "images": {"cam": rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8)}} for t in (9, 12)]
    bad = [{**eps[0], "next_observations": eps[0]["observations"],
            "next_images": {"other": eps[0]["images"]["cam"]}}]
    with pytest.raises(imports.DataError, match=r"next-observation frames for keys \['other'\] but frames for \['cam'\]"):
        imports.validate_episodes(bad, "bad.hdf5")
    data = imports.apply_reward_mode(imports.to_transitions(imports.validate_episodes(eps, "test")),
                                     "sparse-success", "test")[0]
    assert len(data["image.cam"]) == 21 and len(data["actions"]) == 8 + 11  # every frame once, T-1 transitions
    ds = build_chunk_dataset(data, horizon=3, discount=0.9)
    assert ds.layout == layout and ds.frames.dtype == jnp.uint8 and ds.frames.shape == (21, 8 * 8 * 3)
    assert ds.observations.shape == (19, 3)  # no frame is copied into the transition arrays
    batch = jax.jit(lambda key: sample_chunks(ds, key, 64))(jax.random.PRNGKey(0))
    frames, state = layout.unpack(batch["observations"])
    next_frames, next_state = layout.unpack(batch["next_observations"])
    # each sample is a chunk t..t+2 of one episode: s_t's frame and state, s_{t+3}'s frame and state
    flat = [(e, t) for e, ep in enumerate(eps) for t in range(len(ep["actions"]) - 1)]
    for i in range(64):
        row = int(np.flatnonzero((data["observations"] == np.asarray(state[i])).all(1))[0])
        e, t = flat[row]
        np.testing.assert_array_equal(frames[i], eps[e]["images"]["cam"][t])
        np.testing.assert_array_equal(next_frames[i], eps[e]["images"]["cam"][t + 3])
        np.testing.assert_array_equal(next_state[i], eps[e]["observations"][t + 3])


def test_robomimic_images_train_from_the_cli_and_the_loaded_policy_acts_on_raw_frames(tmp_path, data_root, capsys):
    from steerflow import policy

    episodes = ex.oracle_episodes(4, seed=0, episode_steps=31)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (len(ep["actions"]), 32, 32, 3), dtype=np.uint8) for ep in episodes]
    path = ex.write_robomimic(tmp_path / "img.hdf5", episodes, images={"agentview_image": frames})
    cli.main(["data", "import", "robomimic", str(path), "--name", "img", "--obs-keys",
              "robot0_proprio,object,agentview_image", "--action-low", "-1", "--action-high", "1"])
    train, val, _, norm = imports.load_imported("img")
    np.testing.assert_array_equal(np.concatenate([train["image.agentview_image"], val["image.agentview_image"]]),
                                  np.concatenate(frames))  # every recorded frame once, uint8
    assert train["image.agentview_image"].dtype == np.uint8 and train["frame_index"][:3].tolist() == [0, 1, 2]
    # an agent without the encoder is refused before any work, naming the ones that have it
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--agent", "qc-fql", "--dataset", "img", "--reward", "given", "--preset", "smoke"])
    assert err.value.code == 2 and "does not take image observations" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:  # a state env cannot score a frame policy
        cli.main(["train", "--agent", "bc-mf", "--dataset", "img", "--eval-task", "cube-single-task2", "--preset", "smoke"])
    assert err.value.code == 2 and "in-env evaluation of image runs is not built" in capsys.readouterr().err
    out = tmp_path / "run"
    cli.main(["train", "--agent", "bc-mf", "--dataset", "img", "--reward", "sparse-success", "--preset", "smoke",
              "--out", str(out), "--set", "encoder.arch=impala-debug", "encoder.dense=16"])
    final = json.loads((out / "final.json").read_text())
    assert final["metric"] == "val_action_mse" and np.isfinite(final["val_action_mse"]).all()
    assert json.loads((out / encoders.LAYOUT_FILE).read_text()) == {"images": {"agentview_image": [32, 32, 3]},
                                                                    "state_dim": 28}
    loaded = policy.load(out, seed=3)
    raw = {"agentview_image": frames[3][:4], "state": episodes[3]["observations"][:4]}
    chunks = loaded.act(raw)
    assert chunks.shape == (4, loaded.horizon, 5) and np.all(np.abs(chunks) <= 1 + 1e-5)
    # the same as the agent's own act on the packed rows it trained on (state normalised, frames raw)
    agent, state, _, meta = policy.load_run_state(out)
    rows = encoders.ObsLayout.from_json(meta["obs_layout"]).pack(
        frames[3][:4].reshape(4, -1), norm.normalize_obs(raw["state"]).astype(np.float32))
    noise = loaded.sample_noise(4)
    np.testing.assert_allclose(loaded.act(raw, noise=noise).reshape(4, -1),
                               norm.denormalize_action(agent.act_noise(state, jnp.asarray(rows), jnp.asarray(noise))),
                               rtol=1e-5, atol=1e-5)
    assert loaded.act({"agentview_image": frames[3][0], "state": episodes[3]["observations"][0]}).shape == (5, 5)
    with pytest.raises(ValueError, match="acts on camera frames"):
        loaded.act(episodes[3]["observations"][:4])


def test_a_rendered_visual_dataset_holds_the_frames_of_its_states(data_root, capsys):
    from steerflow.data.render import StateRenderer, state_episodes

    cli.main(["data", "render", "cube-single-task2", "--name", "vis", "--episodes", "2", "--dataset-episodes", "2",
              "--episode-steps", "6"])
    assert "rendered 12 frames" in capsys.readouterr().out
    train, val, info, norm = imports.load_imported("vis")
    meta = imports.imported_meta("vis")
    assert meta["format"] == "ogbench-render" and meta["image_keys"] == {"pixels": [64, 64, 3]} and meta["obs_dim"] == 0
    assert train["image.pixels"].dtype == np.uint8 and len(train["actions"]) == 5 and "rewards" in train
    source = state_episodes("cube-single-task2", 2, dataset_episodes=2, episode_steps=6)
    renderer = StateRenderer("cube-single", 2)  # a fresh env
    for t in (0, 5):
        np.testing.assert_array_equal(train["image.pixels"][t], renderer.render(source[0]["qpos"][t], source[0]["qvel"][t]))
    np.testing.assert_array_equal(val["image.pixels"][2], renderer.render(source[1]["qpos"][2], source[1]["qvel"][2]))
    assert not np.array_equal(train["image.pixels"][0], train["image.pixels"][5])  # the arm moved
    renderer.close()
    np.testing.assert_array_equal(train["rewards"], source[0]["rewards"][:5])
    with pytest.raises(SystemExit) as err:
        cli.main(["data", "render", "scene-task1", "--name", "vis2"])
    assert err.value.code == 2 and "cannot render domain 'scene'" in capsys.readouterr().err
