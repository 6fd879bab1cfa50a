"""MeanFlow target, latent geometry, Q-chunking target and LPS gradient routing (SPEC §2-§4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerflow import critic as qc
from steerflow.agents import bc_mf, lps
from steerflow.agents.common import EnvSpec
from steerflow.config import apply_overrides
from steerflow.generative import latent, meanflow

jax.config.update("jax_enable_x64", False)


def _mf_net_and_params(d=4, obs_dim=3, seed=0):
    net = meanflow.make_net(meanflow.MeanFlowConfig(hidden=(32, 32)), d)
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, obs_dim)), jnp.zeros((1, d)),
                      jnp.zeros((1,)), jnp.ones((1,)))
    return net, params


def test_meanflow_jvp_matches_finite_difference():
    """dπ/dt along the tangent (v, 0, 1) equals a central finite difference of π."""
    net, params = _mf_net_and_params()
    key = jax.random.split(jax.random.PRNGKey(1), 4)
    obs = jax.random.normal(key[0], (8, 3))
    a = jax.random.uniform(key[1], (8, 4), minval=-1, maxval=1)
    z = jax.random.normal(key[2], (8, 4))
    t = jnp.linspace(0.2, 0.9, 8)
    r = 0.5 * t
    z_t, v = (1 - t[:, None]) * a + t[:, None] * z, z - a
    f = lambda zz, rr, tt: net.apply(params, obs, zz, rr, tt)
    _, jvp = jax.jvp(f, (z_t, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    h = 1e-3
    fd = (f(z_t + h * v, r, t + h) - f(z_t - h * v, r, t - h)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=2e-2, atol=2e-3)


def test_meanflow_target_formula_and_r0_reduction():
    """The loss regresses onto z_t − v + (t−r)(v − dπ/dt); with r=0 that is z_t + (t−1)v − t·dπ/dt."""
    net, params = _mf_net_and_params()
    key = jax.random.split(jax.random.PRNGKey(2), 3)
    obs, a, z = (jax.random.normal(key[0], (6, 3)), jax.random.uniform(key[1], (6, 4)),
                 jax.random.normal(key[2], (6, 4)))
    cfg = meanflow.MeanFlowConfig(hidden=(32, 32), rt_sampler="zero_r", weight_p=0.0)
    k = jax.random.PRNGKey(3)
    r, t = meanflow.sample_rt(k, 6, cfg)
    assert np.all(r == 0) and np.all((t >= 0) & (t <= 1))
    z_t, v = (1 - t[:, None]) * a + t[:, None] * z, z - a
    f = lambda zz, tt: net.apply(params, obs, zz, jnp.zeros_like(tt), tt)
    pi, dpi = jax.jvp(f, (z_t, t), (v, jnp.ones_like(t)))
    target = z_t + (t[:, None] - 1) * v - t[:, None] * dpi
    expected = jnp.mean(jnp.sum((pi - target) ** 2, -1))  # p = 0: plain squared error
    loss, _ = meanflow.meanflow_loss(net.apply, params, obs, a, z, k, cfg)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_logit_normal_sampler_orders_times_and_ties_a_fraction():
    cfg = meanflow.MeanFlowConfig()
    r, t = meanflow.sample_rt(jax.random.PRNGKey(0), 20_000, cfg)
    assert np.all(r <= t) and np.all((r >= 0) & (t <= 1))
    assert abs(float(jnp.mean(r == t)) - cfg.equal_fraction) < 0.02


def test_sphere_projection_and_prior():
    h = jax.random.normal(jax.random.PRNGKey(0), (100, 25)) * jnp.linspace(0.01, 10, 100)[:, None]
    z = latent.project_to_sphere(h)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 5.0, rtol=1e-3)  # √25 (eps=1e-6 inside the norm)
    cos = jnp.sum(z * h, -1) / (jnp.linalg.norm(z, axis=-1) * jnp.linalg.norm(h, axis=-1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)  # direction kept
    prior = latent.sample_prior(jax.random.PRNGKey(1), (1000, 25), "sphere")
    np.testing.assert_allclose(jnp.linalg.norm(prior, axis=-1), 5.0, rtol=1e-5)
    assert abs(float(jnp.mean(prior))) < 0.05  # uniform directions
    normal = latent.sample_prior(jax.random.PRNGKey(1), (1000, 25), "normal")
    assert float(jnp.std(jnp.linalg.norm(normal, axis=-1))) > 0.3
    with pytest.raises(ValueError, match="geometry"):
        latent.check_geometry("cube")


def test_critic_target_uses_gamma_to_the_horizon_and_masks():
    cfg = qc.CriticConfig(hidden=(16,), num_critics=2, discount=0.9)
    net = qc.make_critic(cfg)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1, 10)))
    key = jax.random.split(jax.random.PRNGKey(1), 3)
    batch = {"observations": jax.random.normal(key[0], (4, 3)), "actions": jnp.zeros((4, 10)),
             "next_observations": jax.random.normal(key[1], (4, 3)),
             "rewards": jnp.array([-1.0, -2.0, 0.0, -0.5]), "masks": jnp.array([1.0, 0.0, 1.0, 0.0])}
    next_a = jax.random.uniform(key[2], (4, 10))
    q_next = net.apply(params, batch["next_observations"], next_a)  # (2, 4)
    y = qc.td_target(net, params, batch, next_a, cfg, horizon=5)
    np.testing.assert_allclose(y, batch["rewards"] + 0.9**5 * batch["masks"] * q_next.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y)[[1, 3]], np.asarray(batch["rewards"])[[1, 3]])  # masked: no bootstrap
    y_min = qc.td_target(net, params, batch, next_a, qc.CriticConfig(**{**cfg.__dict__, "aggregate": "min"}), 5)
    np.testing.assert_allclose(y_min, batch["rewards"] + 0.9**5 * batch["masks"] * q_next.min(0), rtol=1e-6)
    loss, _ = qc.critic_loss(net, params, params, batch, next_a, cfg, 5)
    q = net.apply(params, batch["observations"], batch["actions"])
    np.testing.assert_allclose(loss, jnp.mean((q - y) ** 2), rtol=1e-6)
    # distinct online and target critics: Q from the online one, y from the target one
    target = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
    loss, _ = qc.critic_loss(net, params, target, batch, next_a, cfg, 5)
    y_target = qc.td_target(net, target, batch, next_a, cfg, horizon=5)
    assert float(jnp.max(jnp.abs(y_target - y))) > 1e-3
    np.testing.assert_allclose(loss, jnp.mean((q - y_target) ** 2), rtol=1e-6)


SPEC = EnvSpec(obs_dim=6, action_dim=2, horizon=3)
SMALL = {"*.hidden": (32, 32), "actor_hidden": (32, 32)}


def _batch(key, n=16):
    k = jax.random.split(key, 4)
    return {"observations": jax.random.normal(k[0], (n, 6)),
            "actions": jax.random.uniform(k[1], (n, 6), minval=-1, maxval=1),
            "rewards": -jax.random.uniform(k[2], (n,)), "masks": jnp.ones((n,)),
            "next_observations": jax.random.normal(k[3], (n, 6))}


def test_lps_actor_loss_reaches_latent_only():
    state = lps.init(jax.random.PRNGKey(0), SPEC, apply_overrides(lps.Config(), SMALL))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    grads = jax.grad(lambda p: lps.actor_loss(state, p, obs)[0])(state.params)
    norm = lambda tree: float(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))
    assert norm(grads["actor"]) > 0
    assert norm(grads["base"]) == 0 and norm(grads["critic"]) == 0
    # ... and the gradient does pass *through* the base policy: freezing is not detaching.
    obs_grad = jax.grad(lambda o: lps.actor_loss(state, state.params, o)[0])(obs)
    assert float(jnp.sum(obs_grad**2)) > 0


def test_lps_update_moves_every_network_and_acts_on_the_sphere():
    config = apply_overrides(lps.Config(), SMALL)
    state = lps.init(jax.random.PRNGKey(0), SPEC, config)
    new, metrics = jax.jit(lps.update)(state, _batch(jax.random.PRNGKey(1)))
    for name in ("actor", "base", "critic"):
        moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params[name], new.params[name])
        assert max(jax.tree.leaves(moved)) > 0, name
    assert all(np.isfinite(float(v)) for v in metrics.values())
    chunk = lps.act(new, _batch(jax.random.PRNGKey(2))["observations"])
    assert chunk.shape == (16, 6) and float(jnp.max(jnp.abs(chunk))) <= 1.0
    latents, _ = lps.steer(new, new.params, jnp.ones((3, 6)))
    np.testing.assert_allclose(jnp.linalg.norm(latents, axis=-1), np.sqrt(6), rtol=1e-5)


def test_bc_mf_one_step_decode_fits_a_2d_mixture():
    """Four Gaussian modes in [-1,1]^2: one-step samples land on the modes, all modes covered.

    Measured (3000 steps, 3 seeds): 78-86% of samples within 0.15 of a mode with `normal`
    latents; the bound below leaves a wide margin while an untrained net scores ~10%."""
    spec = EnvSpec(obs_dim=1, action_dim=2, horizon=1)
    modes = jnp.array([[0.5, 0.5], [0.5, -0.5], [-0.5, 0.5], [-0.5, -0.5]])
    config = apply_overrides(bc_mf.Config(), {"*.hidden": (128, 128, 128), "geometry": "normal",
                                              "base.equal_fraction": 0.25})
    state = bc_mf.init(jax.random.PRNGKey(0), spec, config)

    def batch(key, n=256):
        k1, k2 = jax.random.split(key)
        return {"observations": jnp.zeros((n, 1)),
                "actions": modes[jax.random.randint(k1, (n,), 0, 4)] + 0.05 * jax.random.normal(k2, (n, 2))}

    def distances(state):
        a = bc_mf.act(state, jnp.zeros((2000, 1)), jax.random.PRNGKey(7))
        dist = jnp.linalg.norm(a[:, None] - modes[None], axis=-1)
        return jnp.min(dist, 1), np.bincount(np.asarray(jnp.argmin(dist, 1)), minlength=4)

    @jax.jit
    def train(state, key):
        return jax.lax.scan(lambda s, k: (bc_mf.update(s, batch(k))[0], None), state,
                            jax.random.split(key, 3000))[0]

    before, _ = distances(state)
    state = train(state, jax.random.PRNGKey(1))
    after, counts = distances(state)
    assert float(jnp.mean(before < 0.15)) < 0.3
    assert float(jnp.mean(after < 0.15)) > 0.6
    assert counts.min() > 0.12 * 2000  # every mode keeps a fair share
