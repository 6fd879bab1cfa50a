"""QPILOTS-U / QPILOTS-M (SPEC §4.4): the steering estimators against finite differences and a
closed-form posterior, the sampler's rescale, sign and flow times, α = 0 against the base sampler
bit for bit, the direction of steering against a fixed critic, which network (target or online
critic, base and MFM) each piece uses, the gradient routing of the losses, and steering a frozen
base from a finished run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steerflow import cli
from steerflow import critic as qc
from steerflow.agents import bc_fm, qpilots_m, qpilots_u
from steerflow.agents.common import EnvSpec
from steerflow.config import apply_overrides
from steerflow.generative import flow, latent, steering
from steerflow.generative import meta_flow_map as mfm
from steerflow.train import load_checkpoint

SPEC = EnvSpec(obs_dim=3, action_dim=2, horizon=2)
SMALL = {"*.hidden": (32, 32)}


def small(agent, **changes):
    return dataclasses.replace(apply_overrides(agent.Config(), SMALL), **changes)


def batch(key, size=8):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"observations": jax.random.normal(k1, (size, SPEC.obs_dim)),
            "actions": jnp.tanh(jax.random.normal(k2, (size, SPEC.chunk_dim))),
            "rewards": -jnp.ones(size), "masks": jnp.ones(size),
            "next_observations": jax.random.normal(k3, (size, SPEC.obs_dim))}


def central_difference(f, x, h=1e-3):
    """∇f(x) for f: (B, d) → scalar, one coordinate at a time."""
    grad, f = np.zeros(x.shape), jax.jit(f)  # compiled once: 2·x.size evaluations
    for idx in np.ndindex(*x.shape):
        e = jnp.zeros_like(x).at[idx].set(h)
        grad[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
    return grad


def test_tweedie_gradient_matches_finite_differences_and_clips_straight_through():
    state = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u))
    obs = jax.random.normal(jax.random.PRNGKey(1), (3, SPEC.obs_dim))
    x = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (3, SPEC.chunk_dim))
    tau = jnp.full((3,), 0.4)
    net = flow.make_net(state.config.flow, SPEC.chunk_dim)
    velocity = lambda x_, t_: net.apply(state.params["base"], obs, x_, t_)  # noqa: E731
    psi = qpilots_u.pessimistic_value(state)

    def denoised(x_):
        return x_ + (1 - tau)[:, None] * velocity(x_, tau)

    assert float(jnp.max(jnp.abs(denoised(x)))) < 1.0  # inside the box: the clip is inactive
    grad = steering.tweedie_gradient(velocity, psi, obs, x, tau)
    fd = central_difference(lambda x_: jnp.sum(psi(obs, denoised(x_))), x)
    np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=2e-3)

    far = x + 3.0  # denoised point far outside [-1, 1]: the forward pass scores the clipped chunk,
    _, pullback = jax.vjp(denoised, far)  # the backward pass ignores the clip
    score_grad = jax.grad(lambda a: jnp.sum(psi(obs, a)))(jnp.clip(denoised(far), -1, 1))
    np.testing.assert_allclose(steering.tweedie_gradient(velocity, psi, obs, far, tau), pullback(score_grad)[0],
                               rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(grad).sum()) > 0


def test_mfm_posterior_gradient_matches_finite_differences_with_statistics_held():
    state = qpilots_m.init(jax.random.PRNGKey(0), SPEC, small(qpilots_m))
    net = mfm.make_net(state.config.mfm, SPEC.chunk_dim)
    obs = jax.random.normal(jax.random.PRNGKey(1), (3, SPEC.obs_dim))
    x = jax.random.normal(jax.random.PRNGKey(2), (3, SPEC.chunk_dim))
    tau = jnp.full((3,), 0.5)
    noises = jax.random.normal(jax.random.PRNGKey(3), (4, 3, SPEC.chunk_dim))
    posterior = lambda o, x_, t_, e: mfm.posterior_sample(net, state.params["mfm"], o, x_, t_, e)  # noqa: E731
    psi = qpilots_u.pessimistic_value(state)

    def scores(x_):
        return jax.vmap(lambda e: psi(obs, posterior(obs, x_, tau, e)))(noises)  # (N, B)

    raw = scores(x)
    mean, std = float(jnp.mean(raw)), float(jnp.std(raw))

    def objective(x_):  # the same statistics at every x: what "held constant" means
        z = 2.0 * jnp.clip((scores(x_) - mean) / (std + 1e-6), -5.0, 5.0)
        return jnp.sum(jax.nn.logsumexp(z, axis=0) - jnp.log(4))

    normalise = lambda q: steering.normalise_scores(q, 5.0, 2.0)  # noqa: E731
    batched = steering.posterior_gradient(posterior, psi, obs, x, tau, noises, normalise, batched=True)
    looped = steering.posterior_gradient(posterior, psi, obs, x, tau, noises, normalise, batched=False)
    np.testing.assert_allclose(batched, central_difference(objective, x), rtol=3e-2, atol=3e-3)
    np.testing.assert_allclose(batched, looped, rtol=1e-4, atol=1e-6)


def test_steered_euler_adds_the_rescaled_gradient_from_the_second_step_on():
    """Analytic fields that depend on the flow time τ: v(x, τ) = −x + τ·(1, −1) and
    ĝ(x, τ) = (cos 3τ, sin 3τ) + x/4, whose direction turns with τ (the rescale keeps only the
    direction). A wrong sign, a missing rescale, steering at τ = 0 or the wrong τ given to either
    field each changes the result."""
    noise = jnp.array([[1.0, -2.0], [0.5, 0.5]])
    c = jnp.array([1.0, -1.0])

    def velocity(x, tau):
        return -x + tau[:, None] * c

    def gradient(x, tau):
        return jnp.stack([jnp.cos(3 * tau), jnp.sin(3 * tau)], -1) + x / 4

    alpha, steps = 0.7, 4
    out = steering.steered_euler(velocity, lambda x, t, k: gradient(x, t), noise, steps, alpha,
                                 jax.random.PRNGKey(0), eps=0.0)
    x = np.asarray(noise)
    for i in range(steps):
        tau = jnp.full(len(x), i / steps)
        v = np.asarray(velocity(x, tau))
        if i > 0:
            g = np.asarray(gradient(x, tau))
            v = v + alpha * np.linalg.norm(v, axis=1, keepdims=True) / np.linalg.norm(g, axis=1, keepdims=True) * g
        x = x + v / steps
    np.testing.assert_allclose(out, x, rtol=1e-5)


# --------------------------------------------------------------------------- direction and routing

# J = 10 head weights with mean −0.2 and (population) std 1: with Q_j = k_j·g and g < 0 the ensemble
# mean is −0.2·g while the pessimistic aggregate mean − 0.5·std is −0.2·g + 0.5·g = 0.3·g.
HEAD_WEIGHTS = -0.2 + np.tile([1.0, -1.0], 5)


def ranking_critic(params, sign, shift=30.0):
    """Critic parameters whose J heads are Q_j(s, a) = k_j·g(s, a), k = HEAD_WEIGHTS, with
    g = sign·w·h(s, a) + b − shift built from head 0 (h: its last hidden layer; the shift keeps g < 0).
    So the ensemble mean (−0.2·g) and the pessimistic aggregate (0.3·g) rank chunks in opposite
    orders, and sign = −1 gives a critic whose pessimistic value ranks them opposite to sign = +1's."""
    heads = jax.tree.map(lambda p: jnp.broadcast_to(p[0], p.shape), params["params"]["VmapMLP_0"])
    k = jnp.asarray(HEAD_WEIGHTS, jnp.float32)
    last = heads["Dense_2"]
    heads["Dense_2"] = {"kernel": k[:, None, None] * sign * last["kernel"], "bias": k[:, None] * (last["bias"] - shift)}
    return {"params": {"VmapMLP_0": heads}}


def perturbed(params, key, scale=0.3):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def steering_state(agent, alpha):
    """An agent whose target networks differ from the online ones: the target critic is
    `ranking_critic(+1)`, the online critic `ranking_critic(−1)` (it ranks chunks the other way),
    the target base (and MFM) a perturbed copy of the online one."""
    state = agent.init(jax.random.PRNGKey(0), SPEC, small(agent, alpha=alpha))
    params = {**state.params, "critic": ranking_critic(state.params["critic"], -1.0)}
    targets = {**state.target_params, "critic": ranking_critic(state.params["critic"], 1.0),
               "base": perturbed(state.params["base"], jax.random.PRNGKey(7))}
    if "mfm" in params:
        targets["mfm"] = perturbed(params["mfm"], jax.random.PRNGKey(8))
    return state.replace(params=params, target_params=targets)


def ensemble_values(state, critic_params, obs, chunks):
    """(J, B) values of the critic ensemble under `critic_params`."""
    return np.asarray(jax.jit(qc.make_critic(state.config.critic).apply)(critic_params, obs, chunks))


def pessimistic(q):
    """mean_j Q_j − 0.5·std_j Q_j, computed here, not by the library."""
    return q.mean(0) - 0.5 * q.std(0)


def test_the_ranking_critics_disagree_as_the_routing_tests_need():
    """The premise of the tests below: on chunks in the box, the target critic's pessimistic value
    is an increasing function of g, its mean a decreasing one, and the online critic's pessimistic
    value decreases where the target's increases."""
    state = steering_state(qpilots_u, 0.3)
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, SPEC.obs_dim))
    chunks = jax.random.uniform(jax.random.PRNGKey(2), (64, SPEC.chunk_dim), minval=-1, maxval=1)
    target = ensemble_values(state, state.target_params["critic"], obs, chunks)
    online = ensemble_values(state, state.params["critic"], obs, chunks)
    assert np.all(target.mean(0) > 0)  # g < 0 everywhere: k_j·g has mean −0.2·g > 0
    np.testing.assert_allclose(pessimistic(target), -1.5 * target.mean(0), rtol=1e-4)
    assert np.corrcoef(pessimistic(target), pessimistic(online))[0, 1] < -0.9


def test_steering_raises_the_target_critics_pessimistic_value():
    """QPILOTS-U at a small α, against its own α = 0 samples from the same noise: the steered
    chunks have a higher pessimistic value (mean − 0.5·std) under the target critic, computed here
    from the raw ensemble. The critics are `steering_state`'s: ascending ψ's negation, the ensemble
    mean, or the online critic would each lower that value instead."""
    state = steering_state(qpilots_u, 0.1)
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, SPEC.obs_dim))
    key = jax.random.PRNGKey(2)
    act = jax.jit(qpilots_u.act)
    steered = act(state, obs, key)
    plain = act(state.replace(config=dataclasses.replace(state.config, alpha=0.0)), obs, key)
    value = lambda chunks: pessimistic(ensemble_values(state, state.target_params["critic"], obs, chunks))  # noqa: E731
    gain = value(steered) - value(plain)
    assert float(np.mean(gain)) > 0 and np.mean(gain > 0) > 0.75, (np.mean(gain), np.mean(gain > 0))


def reference_tweedie_gradient(state):
    """(base params, critic params, obs, x, τ) ↦ ∇_x [mean − 0.5·std]_j Q_j(s, clip(x + (1 − τ)·v(s, x, τ))),
    the clip straight-through: QPILOTS-U's steering gradient written out here, with the networks named."""
    net = flow.make_net(state.config.flow, SPEC.chunk_dim)
    critic = qc.make_critic(state.config.critic)

    @jax.jit
    def gradient(base_params, critic_params, obs, x, tau):
        def value(x_):
            denoised = x_ + (1 - tau)[:, None] * net.apply(base_params, obs, x_, tau)
            denoised = denoised + jax.lax.stop_gradient(jnp.clip(denoised, -1, 1) - denoised)
            q = critic.apply(critic_params, obs, denoised)
            return jnp.sum(jnp.mean(q, 0) - 0.5 * jnp.std(q, 0))

        return jax.grad(value)(x)

    return gradient


def reference_steered_sample(state, base_params, gradient, obs, key):
    """Algorithm 1 written out as a Python loop: the velocity from `base_params`, ĝ = gradient(x, τ)."""
    velocity = jax.jit(flow.make_net(state.config.flow, SPEC.chunk_dim).apply)
    steps, alpha, eps = state.config.flow.steps, state.config.alpha, state.config.steer_eps
    x = latent.sample_prior(key, (obs.shape[0], SPEC.chunk_dim), "normal")
    for i in range(steps):
        tau = jnp.full((obs.shape[0],), i / steps)
        v = velocity(base_params, obs, x, tau)
        if i > 0:
            g = gradient(x, tau)
            v = v + alpha * jnp.linalg.norm(v, axis=1, keepdims=True) / (jnp.linalg.norm(g, axis=1, keepdims=True)
                                                                          + eps) * g
        x = x + v / steps
    return np.clip(np.asarray(x), -1, 1)


def test_qpilots_u_steers_with_the_target_base_and_critic_and_acts_with_the_online_base():
    """Paper App. C.3: QPILOTS-U's gradient uses the target base flow and the target critic's
    pessimistic aggregate; `act` integrates the online base's velocity, a' for the TD target the
    target base's (App. C.2, "using target nets"). Target and online networks differ here, and the
    flow times differ per row, so each network and τ is pinned."""
    state = steering_state(qpilots_u, 0.5)
    online, target = state.params, state.target_params
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, SPEC.obs_dim))
    x = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (4, SPEC.chunk_dim))
    tau = jnp.array([0.1, 0.4, 0.7, 0.9])
    reference = reference_tweedie_gradient(state)
    grad = np.asarray(jax.jit(lambda s, o, x_, t: qpilots_u.steering_gradient(s, o)(x_, t, None))(state, obs, x, tau))
    expected = np.asarray(reference(target["base"], target["critic"], obs, x, tau))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    for wrong in (reference(online["base"], target["critic"], obs, x, tau),
                  reference(target["base"], online["critic"], obs, x, tau),
                  reference(target["base"], target["critic"], obs, x, 1 - tau)):
        assert np.max(np.abs(wrong - expected)) > 0.1 * np.max(np.abs(expected))  # the test can tell

    def gradient(x_, tau_):
        return reference(target["base"], target["critic"], obs, x_, tau_)

    key = jax.random.PRNGKey(4)
    np.testing.assert_allclose(jax.jit(qpilots_u.act)(state, obs, key),
                               reference_steered_sample(state, online["base"], gradient, obs, key), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(jax.jit(qpilots_u.next_actions)(state, obs, key),
                               reference_steered_sample(state, target["base"], gradient, obs, key), rtol=1e-4,
                               atol=1e-5)


def test_qpilots_m_steers_with_the_online_mfm_and_the_target_critic():
    """Paper App. C.3: QPILOTS-M's gradient is MFM-G under the online meta flow map and the target
    critic's pessimistic aggregate (the statistics of the normalisation held constant)."""
    state = steering_state(qpilots_m, 0.5)
    config = state.config
    net = mfm.make_net(config.mfm, SPEC.chunk_dim)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, SPEC.obs_dim))
    x = jax.random.normal(jax.random.PRNGKey(2), (4, SPEC.chunk_dim))
    tau = jnp.array([0.1, 0.4, 0.7, 0.9])
    key = jax.random.PRNGKey(3)
    noises = jax.random.normal(key, (config.num_posterior_samples, *x.shape))
    critic = qc.make_critic(config.critic)

    @jax.jit
    def reference(mfm_params, critic_params, tau_):
        def objective(x_):
            samples = jax.vmap(lambda e: mfm.posterior_sample(net, mfm_params, obs, x_, tau_, e))(noises)
            q = jax.vmap(lambda a: critic.apply(critic_params, obs, a))(samples)  # (N, J, B)
            scores = jnp.mean(q, 1) - 0.5 * jnp.std(q, 1)  # (N, B)
            mean, std = jax.lax.stop_gradient(jnp.mean(scores)), jax.lax.stop_gradient(jnp.std(scores))
            tilted = config.tilt * jnp.clip((scores - mean) / (std + 1e-6), -config.q_clip, config.q_clip)
            return jnp.sum(jax.nn.logsumexp(tilted, 0) - jnp.log(len(noises)))

        return jax.grad(objective)(x)

    grad = np.asarray(jax.jit(lambda s, o, x_, t, k: qpilots_m.steering_gradient(s, o)(x_, t, k))(state, obs, x, tau,
                                                                                                 key))
    expected = np.asarray(reference(state.params["mfm"], state.target_params["critic"], tau))
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)
    for wrong in (reference(state.target_params["mfm"], state.target_params["critic"], tau),
                  reference(state.params["mfm"], state.params["critic"], tau),
                  reference(state.params["mfm"], state.target_params["critic"], 1 - tau)):
        assert np.max(np.abs(wrong - expected)) > 0.1 * np.max(np.abs(expected))


@pytest.mark.parametrize("agent", [qpilots_u, qpilots_m])
def test_alpha_zero_is_the_base_sampler_bit_for_bit(agent):
    state = agent.init(jax.random.PRNGKey(0), SPEC, small(agent, alpha=0.0))
    fm_config = dataclasses.replace(bc_fm.Config(), flow=state.config.flow)
    base = bc_fm.init(jax.random.PRNGKey(5), SPEC, fm_config)
    base = base.replace(params={"base": state.params["base"]})
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, SPEC.obs_dim))
    for seed in range(3):
        key = jax.random.PRNGKey(10 + seed)
        steered = jax.jit(agent.act)(state, obs, key)
        plain = jax.jit(bc_fm.act)(base, obs, key)
        np.testing.assert_array_equal(np.asarray(steered), np.asarray(plain))
    moved = jax.jit(agent.act)(state.replace(config=dataclasses.replace(state.config, alpha=0.5)), obs, key)
    assert not np.array_equal(np.asarray(moved), np.asarray(plain))  # and α > 0 does steer


def test_unsteered_targets_value_the_base_policy():
    """steered_targets=False: a' is the target base's own sample (the α = 1 steering is not used)."""
    state = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u, alpha=1.0, steered_targets=False))
    state = state.replace(target_params={**state.target_params,  # a target base distinct from the online one
                                         "base": jax.tree.map(lambda p: 0.9 * p, state.params["base"])})
    base = bc_fm.init(jax.random.PRNGKey(5), SPEC, dataclasses.replace(bc_fm.Config(), flow=state.config.flow))
    base = base.replace(params={"base": state.target_params["base"]})
    obs, key = jax.random.normal(jax.random.PRNGKey(1), (6, SPEC.obs_dim)), jax.random.PRNGKey(4)
    np.testing.assert_array_equal(qpilots_u.next_actions(state, obs, key), bc_fm.act(base, obs, key))
    steered = dataclasses.replace(state.config, steered_targets=True)
    assert not np.array_equal(qpilots_u.next_actions(state.replace(config=steered), obs, key), bc_fm.act(base, obs, key))


@pytest.mark.parametrize("agent,next_action_base", [(qpilots_u, "target"), (qpilots_u, "online"),
                                                    (qpilots_m, "target"), (qpilots_m, "online")])
def test_each_loss_reaches_only_its_own_network(agent, next_action_base):
    """The critic's TD loss (whose a' runs the steered sampler through base, critic and MFM) has no
    gradient on base or MFM; L_FM only reaches the base; the MFM loss never reaches the critic."""
    state = agent.init(jax.random.PRNGKey(0), SPEC, small(agent, next_action_base=next_action_base, alpha=1.0))
    terms = agent.loss_terms(state, batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    names = set(state.params)
    expected = {"critic": {"critic"}, "fm": {"base"}, "extra": {"mfm"}}
    losses, _ = terms(state.params)
    assert set(losses) == ({"critic", "fm", "extra"} if agent is qpilots_m else {"critic", "fm"})
    for term in losses:
        grads = jax.jit(jax.grad(lambda p: terms(p)[0][term]))(state.params)
        for net in names:
            norm = float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads[net])))
            assert (norm > 0) == (net in expected[term]), (term, net, norm)


@pytest.mark.parametrize("agent", [qpilots_u, qpilots_m])
def test_a_frozen_base_stays_bitwise_unchanged_under_training(agent):
    state = agent.init(jax.random.PRNGKey(0), SPEC, small(agent, train_base=False))
    assert "base" not in state.target_params
    before = jax.tree.map(np.asarray, state.params["base"])
    update = jax.jit(agent.update)
    for i in range(3):
        state, metrics = update(state, batch(jax.random.PRNGKey(i)))
    assert "fm_loss" not in metrics
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params["base"]))


def test_gradient_clipping_bounds_the_joint_step():
    """With max_grad_norm the first Adam step is unchanged (Adam normalises) but the moments see
    the clipped gradient: the clipped run's first moment has global norm ≤ (1 − β1)·max_norm."""
    clipped = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u, max_grad_norm=1e-3))
    clipped, _ = jax.jit(qpilots_u.update)(clipped, batch(jax.random.PRNGKey(1)))
    mu = clipped.opt_state[1][0].mu
    assert float(jnp.sqrt(sum(jnp.sum(m ** 2) for m in jax.tree.leaves(mu)))) <= 0.1 * 1e-3 * (1 + 1e-4)
    plain = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u, max_grad_norm=0.0))
    plain, _ = jax.jit(qpilots_u.update)(plain, batch(jax.random.PRNGKey(1)))
    assert float(jnp.sqrt(sum(jnp.sum(m ** 2) for m in jax.tree.leaves(plain.opt_state[0].mu)))) > 0.1 * 1e-3 * 10


def test_named_configs_set_their_fields_and_keep_the_sizes():
    config = apply_overrides(qpilots_u.Config(), {"*.hidden": (64, 64)})
    assert config.critic.num_critics == 10 and config.critic.aggregate == "pessimistic"
    assert config.critic.rho == 0.5 and config.critic.activation == "silu" and config.critic.hidden == (64, 64)
    assert config.flow.activation == "silu" and config.flow.time_features == 64
    from steerflow.agents import qc_fql

    fql = apply_overrides(qc_fql.Config(), {"*.hidden": (64, 64), "critic": "qpilots"})
    assert fql.critic == dataclasses.replace(qc.CriticConfig(hidden=(64, 64)), **qc.CriticConfig.NAMED["qpilots"])
    assert qc_fql.Config().critic.activation == "gelu" and qc_fql.Config().max_grad_norm == 0.0  # defaults stay
    with pytest.raises(ValueError, match="critic=.*names \\['qpilots'\\]"):
        apply_overrides(qc_fql.Config(), {"critic": "qpilot"})


# --------------------------------------------------------------------------- the 2-D posterior

MODES = np.array([[-0.5, 0.0], [0.5, 0.2]])
MODE_STD = 0.15


def exact_posterior(x, tau):
    """p(a | x_τ = x) for a ~ ½ Σ_k N(μ_k, s² I), x_τ = (1 − τ)·ε + τ·a: (weights (K,), means (K, 2), var)."""
    s2, n2 = MODE_STD ** 2, (1 - tau) ** 2
    precision = 1 / s2 + tau ** 2 / n2
    means = (MODES / s2 + tau * x / n2) / precision
    marginal_var = tau ** 2 * s2 + n2
    log_w = -np.sum((x - tau * MODES) ** 2, -1) / (2 * marginal_var)
    w = np.exp(log_w - log_w.max())
    return w / w.sum(), means, 1 / precision


def exact_tilt_gradient(x, tau, c):
    """∇_x log E[exp(c·a) | x_τ = x] for the closed-form Gaussian-mixture posterior."""
    def log_tilt(x_):
        s2, n2 = MODE_STD ** 2, (1 - tau) ** 2
        precision = 1 / s2 + tau ** 2 / n2
        means = (jnp.asarray(MODES) / s2 + tau * x_ / n2) / precision
        log_w = -jnp.sum((x_ - tau * jnp.asarray(MODES)) ** 2, -1) / (2 * (tau ** 2 * s2 + n2))
        log_w = log_w - jax.nn.logsumexp(log_w)
        return jax.nn.logsumexp(log_w + means @ c + 0.5 * jnp.sum(c ** 2) / precision)

    return np.asarray(jax.grad(log_tilt)(jnp.asarray(x)))


@pytest.fixture(scope="module")
def trained_mfm():
    """An MFM trained by `mfm_loss` (the agent's own loss and Polyak target) on 2-D mixture data."""
    import optax

    config = mfm.MetaFlowMapConfig(hidden=(128, 128, 128))
    net = mfm.make_net(config, 2)
    params = mfm.init(net, jax.random.PRNGKey(0), 1, 2)
    target, tx = params, optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, target, opt_state, key):
        k_data, k_mode, k_loss = jax.random.split(key, 3)
        modes = jnp.asarray(MODES)[jax.random.randint(k_mode, (512,), 0, 2)]
        actions = modes + MODE_STD * jax.random.normal(k_data, (512, 2))
        grads = jax.grad(lambda p: mfm.mfm_loss(net, p, target, jnp.zeros((512, 1)), actions, k_loss, config)[0])(params)
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
        return params, optax.incremental_update(params, target, 0.005), opt_state

    for i in range(4000):
        params, target, opt_state = step(params, target, opt_state, jax.random.PRNGKey(i))
    return net, params


CONTEXTS = [(0.3, (0.1, 0.0)), (0.5, (0.3, 0.2)), (0.7, (-0.3, 0.0)), (0.5, (0.0, 0.05))]


@pytest.mark.parametrize("tau,x", CONTEXTS)
def test_the_mfm_samples_the_closed_form_posterior(trained_mfm, tau, x):
    """Tolerances: mean within 0.06, covariance within 40% of its largest entry, mode weights
    within 0.12 (a 4000-step MFM is off by up to ~1/3 in the covariance where the two modes share
    the posterior). A point estimate (no spread), the unconditional marginal (another mean) or a
    unimodal fit (wrong weights) fail them."""
    net, params = trained_mfm
    n = 4000
    rep = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32), (n, *np.shape(a)))  # noqa: E731
    samples = np.asarray(mfm.posterior_sample(net, params, jnp.zeros((n, 1)), rep(x), jnp.full((n,), tau),
                                              jax.random.normal(jax.random.PRNGKey(7), (n, 2))))
    w, means, var = exact_posterior(np.asarray(x), tau)
    mean = w @ means
    cov = np.diag([var, var]) + np.einsum("k,ki,kj->ij", w, means - mean, means - mean)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.06)
    np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.4 * np.max(np.diag(cov)))
    near_first = np.mean(np.linalg.norm(samples - means[0], axis=1) < np.linalg.norm(samples - means[1], axis=1))
    assert abs(near_first - w[0]) < 0.12  # the mode weights, not just the moments


@pytest.mark.parametrize("tau,x", CONTEXTS)
def test_the_mfm_steering_gradient_points_along_the_exact_tilt_gradient(trained_mfm, tau, x):
    net, params = trained_mfm
    c = jnp.array([1.5, -1.0])  # ψ(a) = c·a, so E[exp ψ | x] has a closed form
    xs = jnp.asarray([x], jnp.float32)
    noises = jax.random.normal(jax.random.PRNGKey(3), (512, 1, 2))
    posterior = lambda o, x_, t_, e: mfm.posterior_sample(net, params, o, x_, t_, e)  # noqa: E731
    grad = np.asarray(steering.posterior_gradient(posterior, lambda o, a: a @ c, jnp.zeros((1, 1)), xs,
                                                  jnp.full((1,), tau), noises))[0]
    exact = exact_tilt_gradient(np.asarray(x, np.float32), tau, c)
    cosine = grad @ exact / (np.linalg.norm(grad) * np.linalg.norm(exact))
    assert cosine > 0.9, (grad, exact)


# --------------------------------------------------------------------------- frozen base, end to end

TINY = ["--train-set", "dataset_episodes=3", "dataset_episode_steps=101"]


def _states(run_dir, agent_module):
    from steerflow.train import RunSpec, resolve

    run = RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])
    _, config, _ = resolve(run)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in run.seeds])
    states = jax.vmap(lambda k: agent_module.init(k, SPEC_CUBE, config))(keys)
    return load_checkpoint(run_dir, states, keys)[0]


SPEC_CUBE = EnvSpec(obs_dim=28, action_dim=5, horizon=5)


def test_steering_a_frozen_bc_fm_run_from_the_cli(data_root, tmp_path, capsys):
    base_dir, steer_dir = tmp_path / "base", tmp_path / "steer"
    cli.main(["train", "--agent", "bc-fm", "--task", "cube-single-task2", "--preset", "smoke", "--seeds", "0,1",
              "--out", str(base_dir), *TINY])
    cli.main(["train", "--agent", "qpilots-u", "--task", "cube-single-task2", "--preset", "smoke", "--seeds", "1",
              "--out", str(steer_dir), "--base-from", str(base_dir), "--set", "alpha=0", *TINY])
    config = json.loads((steer_dir / "config.json").read_text())
    assert config["run"]["base_from"] == str(base_dir) and config["agent_config"]["train_base"] is False
    base, steered = _states(base_dir, bc_fm), _states(steer_dir, qpilots_u)
    seed1 = jax.tree.map(lambda a: a[1], base)
    jax.tree.map(np.testing.assert_array_equal, seed1.params["base"],
                 jax.tree.map(lambda a: a[0], steered.params["base"]))  # frozen through 40 updates
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 28))
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(jax.jit(qpilots_u.act)(jax.tree.map(lambda a: a[0], steered), obs, key),
                                  jax.jit(bc_fm.act)(seed1, obs, key))  # α = 0 reproduces the base's samples
    with pytest.raises(SystemExit):
        cli.main(["train", "--agent", "qpilots-u", "--task", "cube-single-task2", "--preset", "smoke",
                  "--seeds", "5", "--out", str(tmp_path / "bad"), "--base-from", str(base_dir), *TINY])
    assert "seeds [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before any data or directory work


def test_the_qpilots_summary_selects_alpha_by_the_tuning_mean(tmp_path):
    """benchmarks/qpilots_summary.py: per-task α tables from alpha_eval records, and the report's
    rule (best mean over tasks 2 and 4, ties to the smaller α; none until both are measured)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "qpilots_summary.py"
    spec = importlib.util.spec_from_file_location("qpilots_summary", path)
    summary_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary_mod)

    def record(name, task, seed, by_alpha):
        (tmp_path / name).mkdir()
        results = [{"alpha": a, "success": [s], "mean": s} for a, s in by_alpha.items()]
        (tmp_path / name / "alpha_eval.json").write_text(json.dumps(
            {"agent": "qpilots-u", "task": task, "seeds": [seed], "results": results}))

    record("t2s0", "cube-single-task2", 0, {0.0: 0.0, 0.1: 0.75, 0.3: 0.5})
    assert summary_mod.summarise(tmp_path)["agents"][0]["selected"] is None  # task 4 missing
    record("t2s1", "cube-single-task2", 1, {0.0: 0.0, 0.1: 0.25, 0.3: 0.5})
    record("t4s0", "cube-single-task4", 0, {0.0: 0.0, 0.1: 0.25, 0.3: 0.25})
    record("t1s0", "cube-single-task1", 0, {0.0: 0.0, 0.1: 0.0, 0.3: 1.0})  # not a tuning task
    entry = summary_mod.summarise(tmp_path)["agents"][0]
    assert entry["tasks"]["cube-single-task2"]["0.1"]["mean"] == pytest.approx(0.5)
    # task 2: α=0.1 and 0.3 both 0.5; task 4: both 0.25: a tie, the smaller α
    assert entry["selected"]["alpha"] == "0.1"
    record("t4s1", "cube-single-task4", 1, {0.0: 0.0, 0.1: 0.25, 0.3: 0.75})
    assert summary_mod.summarise(tmp_path)["agents"][0]["selected"]["alpha"] == "0.3"
    assert "selected α" in summary_mod.markdown(summary_mod.summarise(tmp_path))


def _benchmark_module(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_of_n_on_the_qpilots_critic_picks_the_best_unsteered_base_sample():
    """benchmarks/qpilots_alpha_eval.py --best-of: N = 1 is the base's own sample (α = 0) from the
    same key, bit for bit; N = 8 returns the candidate the online critic's aggregate ranks first."""
    policy = _benchmark_module("qpilots_alpha_eval").best_of_n_policy
    state = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u, alpha=0.0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, SPEC.obs_dim))
    key = jax.random.PRNGKey(2)
    np.testing.assert_array_equal(policy(1)(state, obs, key), jax.jit(qpilots_u.act)(state, obs, key))

    n, config = 8, state.config
    chosen = policy(n)(state, obs, key)
    rep_obs = jnp.repeat(obs, n, axis=0)
    noise = latent.sample_prior(key, (4 * n, SPEC.chunk_dim), "normal")
    cands = jnp.clip(flow.sample(flow.make_net(config.flow, SPEC.chunk_dim).apply, state.params["base"], rep_obs,
                                 noise, config.flow.steps), -1, 1).reshape(4, n, -1)
    q = qc.aggregate(qc.make_critic(config.critic).apply(state.params["critic"], rep_obs, cands.reshape(4 * n, -1)),
                     config.critic).reshape(4, n)
    assert not np.allclose(q, q[:, :1])  # the candidates differ in value, so the choice is a real one
    np.testing.assert_allclose(chosen, cands[jnp.arange(4), jnp.argmax(q, axis=1)], rtol=1e-6)


def test_the_qpilots_summary_tabulates_best_of_n_beside_the_alpha_grid(tmp_path):
    summary_mod = _benchmark_module("qpilots_summary")
    for name, seed, bon in (("a", 0, 0.5), ("b", 1, 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "alpha_eval.json").write_text(json.dumps(
            {"agent": "qpilots-u", "task": "cube-single-task2", "seeds": [seed],
             "results": [{"alpha": 0.0, "success": [0.0], "mean": 0.0}],
             "best_of_n": [{"n": 8, "success": [bon], "mean": bon}]}))
    entry = summary_mod.summarise(tmp_path)["agents"][0]
    assert entry["best_of_n"]["cube-single-task2"]["8"]["mean"] == pytest.approx(0.375)
    assert "N=8" in summary_mod.markdown(summary_mod.summarise(tmp_path))


def test_steered_endpoint_at_alpha_zero_is_the_base_endpoint_from_the_same_noise():
    """qpilots_u.steered_endpoint / base_endpoint (benchmarks/qpilots_diagnostics.py compares them
    before the clip): at α = 0 the two are the same chunk; at α > 0 they differ only by steering."""
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, SPEC.obs_dim))
    key = jax.random.PRNGKey(2)
    state = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u, alpha=0.0))
    base = qpilots_u.base_endpoint(state, obs, key, state.params["base"])
    np.testing.assert_allclose(qpilots_u.steered_endpoint(state, obs, key, state.params["base"]), base, atol=1e-6)
    steered = state.replace(config=dataclasses.replace(state.config, alpha=0.5))
    assert not np.allclose(qpilots_u.steered_endpoint(steered, obs, key, state.params["base"]), base, atol=1e-4)
    np.testing.assert_array_equal(qpilots_u.base_sample(state, obs, key, state.params["base"]),
                                  jnp.clip(base, -1, 1))


def test_the_diagnostics_clip_share_and_nearest_distance():
    """benchmarks/qpilots_diagnostics.py: the clip removes the part of the step outside [-1, 1]; a
    chunk that is one of the base samples is at distance 0 from the nearest."""
    diag = _benchmark_module("qpilots_diagnostics")
    x_base = np.array([[0.0, 0.5], [0.2, 0.2]])
    x_steer = np.array([[0.0, 2.5], [0.2, 0.2]])  # row 0: a step of 2, of which 1.5 lies past the bound
    lost, clipped = diag.clip_loss(x_steer, x_base)
    assert lost[0] == pytest.approx(0.75) and np.isnan(lost[1])
    np.testing.assert_allclose(clipped, [0.5, 0.0])

    state = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u))
    obs = jax.random.normal(jax.random.PRNGKey(1), (3, SPEC.obs_dim))
    key = jax.random.PRNGKey(2)
    own = qpilots_u.base_sample(state, obs, key, state.params["base"])
    # nearest=1 draws the samples with the same key as `own`: distance 0 exactly; else positive
    np.testing.assert_allclose(diag.nearest_base_rms(state, 1)(obs, own, key), 0.0, atol=1e-7)
    assert np.all(np.asarray(diag.nearest_base_rms(state, 1)(obs, own, jax.random.PRNGKey(3))) > 0)


def test_the_diagnostics_value_steering_with_its_own_critic_and_the_judge():
    """benchmarks/qpilots_diagnostics.py: the base row is the zero of every delta; steering raises
    its own critic's ψ at small α (its direction); the judge column is the judge's ψ, so a judge
    that is the steering run itself reproduces the steering column, and another one does not."""
    diag = _benchmark_module("qpilots_diagnostics")
    state = qpilots_u.init(jax.random.PRNGKey(0), SPEC, small(qpilots_u))
    other = qpilots_u.init(jax.random.PRNGKey(5), SPEC, small(qpilots_u))
    other = other.replace(params={**other.params, "base": state.params["base"]})
    obs = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (64, SPEC.obs_dim)))
    args = diag.parse_args(["s", "j", "--alphas", "0.05", "--best-of", "8", "--nearest", "4", "--batch", "32"])
    rows = {r["rule"]: r for r in diag.summarise(diag.collect(state, state, obs, args))}
    assert rows["base"]["steer_value_delta"] == 0 and rows["base"]["judge_raised"] == 0
    assert rows["steer"]["steer_value_delta"] > 0 and rows["steer"]["steer_value_delta_ci"][0] > 0
    assert rows["steer"]["judge_value_delta"] == pytest.approx(rows["steer"]["steer_value_delta"])
    assert 0 <= rows["steer"]["clip_lost"] <= 1
    judged = {r["rule"]: r for r in diag.summarise(diag.collect(state, other, obs, args))}
    assert judged["steer"]["steer_value_delta"] == pytest.approx(rows["steer"]["steer_value_delta"])
    assert judged["steer"]["judge_value_delta"] != pytest.approx(rows["steer"]["judge_value_delta"])


def test_the_qpilots_summary_averages_diagnostics_per_critic_size_and_rule(tmp_path):
    """benchmarks/qpilots_summary.py: diagnostics records averaged over seeds, keyed by the steering
    critic's size from its overrides (2) or the agent's default (the paper's 10)."""
    summary_mod = _benchmark_module("qpilots_summary")
    for name, seed, overrides, delta in (("a", 0, {"critic.num_critics": "2"}, 0.5), ("b", 1, {"critic.num_critics": "2"}, 0.25),
                                         ("c", 0, {}, -1.0)):
        (tmp_path / name).mkdir()
        rows = [{"rule": "base", "param": None, "steer_value_delta": 0.0, "judge_value_delta": 0.0, "judge_raised": 0.0,
                 "nearest_rms": 0.1},
                {"rule": "steer", "param": 0.1, "steer_value_delta": 1.0, "judge_value_delta": delta, "judge_raised": 0.5,
                 "nearest_rms": 0.2, "clip_lost": 0.1, "clipped_coords": 0.01}]
        (tmp_path / name / "diagnostics.json").write_text(json.dumps(
            {"task": "cube-single-task2", "seed": seed, "steer_overrides": overrides,
             "judge_overrides": {"critic.num_critics": "2"} if not overrides else {}, "rows": rows}))
    diag = summary_mod.summarise_diagnostics(tmp_path)
    by = {(r["critics"], r["rule"]): r for r in diag}
    assert by[(2, "steer")]["judge_value_delta"] == pytest.approx(0.375) and by[(2, "steer")]["seeds"] == [0, 1]
    assert by[(10, "steer")]["judge_value_delta"] == pytest.approx(-1.0) and by[(10, "steer")]["judge_critics"] == 2
    assert [r["rule"] for r in diag] == ["base", "steer", "base", "steer"]
    assert "| 2 (10) | cube-single-task2 | 0,1 | α=0.1 | +1.000 | +0.375 | 50 |" in "\n".join(
        summary_mod.diagnostics_markdown(diag))


def test_the_qpilots_summary_selects_only_alphas_measured_on_every_seed(tmp_path):
    """benchmarks/qpilots_summary.py: an α evaluated on one seed of three (a finer grid added later)
    is tabulated but does not compete in the selection, however high its mean."""
    summary_mod = _benchmark_module("qpilots_summary")
    for task in ("cube-single-task2", "cube-single-task4"):
        for seed in (0, 1):
            by_alpha = {0.0: 0.0, 0.1: 0.5, 0.3: 0.25, **({0.2: 1.0} if seed == 0 else {})}
            (tmp_path / f"{task}-{seed}").mkdir()
            (tmp_path / f"{task}-{seed}" / "alpha_eval.json").write_text(json.dumps(
                {"agent": "qpilots-u", "task": task, "seeds": [seed], "overrides": {"critic.num_critics": "2"},
                 "results": [{"alpha": a, "success": [v], "mean": v} for a, v in by_alpha.items()]}))
    entry = summary_mod.summarise(tmp_path)["agents"][0]
    assert entry["tasks"]["cube-single-task2"]["0.2"]["mean"] == 1.0 and entry["critics"] == 2
    assert entry["selected"]["alpha"] == "0.1" and "0.2" not in entry["selected"]["tuning_means"]


def test_the_pessimistic_aggregate_has_a_finite_gradient_where_the_critics_agree():
    """critic.aggregate: mean − ρ·std, with jnp.std's value everywhere and a
    finite gradient (the mean's) where they agree exactly, so steering through ψ never turns a tie
    into a NaN chunk (jnp.std's own gradient there is 0·∞)."""
    config = qc.CriticConfig(num_critics=2, aggregate="pessimistic", rho=0.5)
    q = jnp.array([[1.0, -3.0], [1.0, 2.0]])  # state 0: the two critics agree
    np.testing.assert_array_equal(qc.aggregate(q, config), jnp.mean(q, 0) - 0.5 * jnp.std(q, 0))
    grad = jax.grad(lambda q_: jnp.sum(qc.aggregate(q_, config)))(q)
    np.testing.assert_allclose(grad[:, 0], [0.5, 0.5])
    np.testing.assert_allclose(grad[:, 1], [0.75, 0.25])


def test_alpha_zero_never_evaluates_the_steering_gradient():
    """steering.steered_euler at α = 0 is the base's Euler sampler even when the gradient is not
    finite (0 · NaN would otherwise be NaN: the α = 0 row of an α grid was once not the base)."""
    noise = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    velocity = lambda x, tau: -x + tau[:, None]  # noqa: E731
    nan_gradient = lambda x, tau, key: jnp.full_like(x, jnp.nan)  # noqa: E731
    x = steering.steered_euler(velocity, nan_gradient, noise, 5, 0.0, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(x, flow.euler(velocity, noise, 5))
    assert np.isnan(steering.steered_euler(velocity, nan_gradient, noise, 5, 0.1, jax.random.PRNGKey(1))).all()
