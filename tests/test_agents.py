"""Every agent of the LPS paper on the shared contract (SPEC §3-§4): shapes, which parameters each
loss may move, the direction of LPS's actor update, sampling conventions, CFGRL guidance, DSRL's
latent critic, and the LPS ablation switches. End-to-end CLI runs of every agent live in
test_end_to_end.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from steerflow import critic as qc
from steerflow.agents import AGENTS, bc_fm, cfgrl, dsrl_na, lps, lpsd, qc_bon, qc_fql, qc_mfql
from steerflow.agents.common import EnvSpec
from steerflow.config import apply_overrides
from steerflow.generative import flow, latent
from steerflow.train import has_field

SPEC = EnvSpec(obs_dim=6, action_dim=2, horizon=3)  # chunk d = 6


def _config(module, **overrides):
    config = module.Config()
    small = {k: v for k, v in {"*.hidden": (32, 32), "*.actor_hidden": (32, 32)}.items() if has_field(config, k[2:])}
    return apply_overrides(config, {**small, **overrides})


def _batch(key, n=16):
    k = jax.random.split(key, 4)
    return {"observations": jax.random.normal(k[0], (n, 6)),
            "actions": jax.random.uniform(k[1], (n, 6), minval=-1, maxval=1),
            "rewards": -jax.random.uniform(k[2], (n,)), "masks": jnp.ones((n,)),
            "next_observations": jax.random.normal(k[3], (n, 6))}


def _sq_norm(tree) -> float:
    return float(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))


def _moved(before, after) -> bool:
    return max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before, after))) > 0


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_updates_every_network_and_acts_in_bounds(name):
    module = AGENTS[name]
    state = module.init(jax.random.PRNGKey(0), SPEC, _config(module, **({"num_samples": 4} if name == "qc-bon" else {})))
    new, metrics = jax.jit(module.update)(state, _batch(jax.random.PRNGKey(1)))
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    for net in state.params:
        assert _moved(state.params[net], new.params[net]), f"{name}: {net} did not move"
    for net in state.target_params:  # Polyak copies follow, but only by τ
        assert _moved(state.target_params[net], new.target_params[net]), f"{name}: target {net}"
    chunk = jax.jit(module.act)(new, _batch(jax.random.PRNGKey(2))["observations"], jax.random.PRNGKey(3))
    assert chunk.shape == (16, SPEC.chunk_dim) and float(jnp.max(jnp.abs(chunk))) <= 1.0
    assert int(new.step) == 1


# ----------------------------------------------------------------------- gradient routing

def _grads(loss, params):
    return jax.jit(jax.grad(lambda p: loss(p)[0]))(params)  # jitted: eager op-by-op grads take minutes


@pytest.mark.parametrize("module", [qc_fql, qc_mfql])
def test_qc_fql_actor_loss_moves_only_the_one_step_actor(module):
    """The Q term does not move the critic; the distillation teacher does not move the base."""
    state = module.init(jax.random.PRNGKey(0), SPEC, _config(module, alpha=10.0))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    noise = jax.random.normal(jax.random.PRNGKey(2), (16, 6))
    grads = _grads(lambda p: module.actor_loss(state, p, obs, noise), state.params)
    assert _sq_norm(grads["actor"]) > 0
    assert _sq_norm(grads["critic"]) == 0 and _sq_norm(grads["base"]) == 0


def test_qc_fql_alpha_trades_distillation_against_q():
    """With α = 0 the actor gradient is the Q term alone; a large α makes distillation dominate."""
    state = qc_fql.init(jax.random.PRNGKey(0), SPEC, _config(qc_fql, alpha=0.0))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    noise = jax.random.normal(jax.random.PRNGKey(2), (16, 6))
    loss0, info = qc_fql.actor_loss(state, state.params, obs, noise)
    np.testing.assert_allclose(float(loss0), -float(info["actor_q"]), rtol=1e-5)
    big = state.replace(config=_config(qc_fql, alpha=1000.0))
    loss_big, info_big = qc_fql.actor_loss(big, big.params, obs, noise)
    np.testing.assert_allclose(float(loss_big), 1000.0 * float(info_big["distill_loss"]) - float(info_big["actor_q"]),
                               rtol=1e-5)


@pytest.mark.parametrize("variant,geometry", [("deterministic", "sphere"), ("gaussian", "normal")])
def test_dsrl_losses_each_move_only_their_own_network(variant, geometry):
    """The latent actor moves only itself (and the SAC temperature); the NA distillation moves only
    the latent critic; neither touches the action critic or the base."""
    state = dsrl_na.init(jax.random.PRNGKey(0), SPEC, _config(dsrl_na, variant=variant, geometry=geometry))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    key = jax.random.PRNGKey(2)
    actor_grads = _grads(lambda p: dsrl_na.actor_loss(state, p, obs, key), state.params)
    own = {"actor", "log_temp"} if variant == "gaussian" else {"actor"}
    for net, g in actor_grads.items():
        assert (_sq_norm(g) > 0) == (net in own), (net, _sq_norm(g))
    na_grads = _grads(lambda p: dsrl_na.latent_critic_loss(state, p, obs, key), state.params)
    for net, g in na_grads.items():
        assert (_sq_norm(g) > 0) == (net == "latent_critic"), net


def test_dsrl_gaussian_variant_requires_normal_latents():
    with pytest.raises(ValueError, match="geometry=normal"):
        dsrl_na.init(jax.random.PRNGKey(0), SPEC, _config(dsrl_na, variant="gaussian"))


@pytest.mark.parametrize("regularizer", ["action", "latent"])
def test_lpsd_actor_loss_moves_only_the_latent_actor(regularizer):
    state = lpsd.init(jax.random.PRNGKey(0), SPEC, _config(lpsd, regularizer=regularizer))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    eps = latent.sample_prior(jax.random.PRNGKey(2), (16, 6), "sphere")
    grads = _grads(lambda p: lpsd.actor_loss(state, p, obs, eps), state.params)
    assert _sq_norm(grads["actor"]) > 0
    assert _sq_norm(grads["critic"]) == 0 and _sq_norm(grads["base"]) == 0
    _, info = lpsd.actor_loss(state, state.params, obs, eps)
    assert float(info["regularizer"]) > 0


@pytest.mark.parametrize("overrides", [{"decoder": "fm-bptt"}, {"decoder": "fm-1step"}, {"geometry": "truncated"},
                                       {"geometry": "normal"}, {"base.parameterisation": "displacement"}])
def test_lps_ablations_keep_the_frozen_in_loss_routing(overrides):
    """Every ablation switch still routes the actor loss through a frozen base and critic."""
    state = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, **overrides))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    grads = _grads(lambda p: lps.actor_loss(state, p, obs), state.params)
    assert _sq_norm(grads["actor"]) > 0
    assert _sq_norm(grads["critic"]) == 0 and _sq_norm(grads["base"]) == 0
    latents, _ = lps.steer(state, state.params, 100.0 * obs)  # a large raw output
    if overrides.get("geometry") == "truncated":
        assert float(jnp.max(jnp.abs(latents))) <= latent.TRUNCATION
    if "geometry" not in overrides:
        np.testing.assert_allclose(jnp.linalg.norm(latents, axis=-1), np.sqrt(6), rtol=1e-5)


def _train(module, steps=20, **overrides):
    state = module.init(jax.random.PRNGKey(0), SPEC, _config(module, **overrides))
    update = jax.jit(module.update)
    for i in range(steps):
        state, _ = update(state, _batch(jax.random.PRNGKey(100 + i)))
    return state


def _relative_change(a, b) -> float:
    """max over networks of ‖a − b‖ / ‖a‖."""
    return max(np.sqrt(_sq_norm(jax.tree.map(jnp.subtract, a[n], b[n])) / _sq_norm(a[n])) for n in a)


@pytest.mark.parametrize("module", [lps, dsrl_na])
def test_base_loss_weight_alpha_is_inert_under_adam(module):
    """Paper §V-C weighs the base's BC loss by α. Only that loss reaches the base's parameters and
    Adam divides each gradient by its own running RMS, so α·g gives the same step as g (up to
    Adam's ε): α = 1000 and α = 1 train the same networks. Measured after 20 updates: relative
    change 0.0 (bit-identical float32) in every network of LPS and DSRL-NA. α = 0 stops the base,
    so α does reach the loss. A sensitivity study over this α is vacuous."""
    a, b = _train(module, alpha=1.0), _train(module, alpha=1000.0)
    assert _relative_change(a.params, b.params) < 1e-4
    init = module.init(jax.random.PRNGKey(0), SPEC, _config(module, alpha=0.0))
    assert not _moved(init.params["base"], _train(module, alpha=0.0).params["base"])


def test_qc_mfql_alpha_is_not_inert():
    """The control for the test above: QC-MFQL's α weighs distillation against Q on the *same*
    actor, so it changes the actor (measured relative change 0.026 after 20 updates; QC-FQL 0.022)."""
    a, b = _train(qc_mfql, alpha=1.0), _train(qc_mfql, alpha=1000.0)
    assert _relative_change({"actor": a.params["actor"]}, {"actor": b.params["actor"]}) > 0.01


def test_lps_clip_actor_chunk_scores_the_clipped_chunk():
    """`clip_actor_chunk` (the authors' choice) feeds clip(π_β(s, l)) to Q in the actor loss: the
    loss then equals −λ·mean Q(s, clip(chunk)), and entries outside the box get no gradient."""
    state = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, clip_actor_chunk=True))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    _, chunk = lps.steer(state, state.params, obs)
    critic = qc.make_critic(state.config.critic)
    q = critic.apply(state.params["critic"], obs, jnp.clip(chunk, -1, 1))
    loss, _ = lps.actor_loss(state, state.params, obs)
    np.testing.assert_allclose(loss, -jnp.mean(q) / jnp.mean(jnp.abs(q)), rtol=1e-5)
    unclipped = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps))
    big = 30.0 * obs  # drive the decoded chunk out of the box
    g_clip = _grads(lambda p: lps.actor_loss(state, p, big), state.params)["actor"]
    g_raw = _grads(lambda p: lps.actor_loss(unclipped, p, big), unclipped.params)["actor"]
    assert _sq_norm(g_clip) < _sq_norm(g_raw)


@pytest.mark.parametrize("aggregate", ["pessimistic", "min"])
def test_lps_actor_climbs_the_critics_aggregate_when_asked(aggregate):
    """With `critic.aggregate=pessimistic` (e.g. `--set critic=qpilots`) the actor loss is
    −λ·mean_B(mean_j Q_j − ρ·std_j Q_j), with `critic.aggregate=min` −λ·mean_B(min_j Q_j); not the
    plain mean the paper's LPS climbs (the default)."""
    state = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, **{"critic.num_critics": 4,
                                                                 "critic.aggregate": aggregate}))
    obs = _batch(jax.random.PRNGKey(1))["observations"]
    _, chunk = lps.steer(state, state.params, obs)
    q = qc.make_critic(state.config.critic).apply(state.params["critic"], obs, chunk)  # (J, B)
    loss, _ = lps.actor_loss(state, state.params, obs)
    climbed = jnp.mean(q, 0) - 0.5 * jnp.std(q, 0) if aggregate == "pessimistic" else jnp.min(q, 0)
    np.testing.assert_allclose(loss, -jnp.mean(climbed) / jnp.mean(jnp.abs(q)), rtol=1e-5)
    assert abs(float(loss) + float(jnp.mean(q) / jnp.mean(jnp.abs(q)))) > 1e-4  # not the mean's loss


def test_lps_update_raises_the_critics_value_of_the_decoded_chunk():
    """One `lps.update` moves the latent actor so that the critic its loss saw (the online critic
    before the update) values the chunk the base (before the update) decodes from the new latent
    higher, on average over the batch's states, than the old one: the actor ascends Q. The value
    is the ensemble mean computed here. The target critic is set to rank chunks the other way
    (its output layer negated), so an actor loss with the wrong sign, or one that climbs the
    target critic, lowers the value instead."""
    state = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps))
    critic = state.params["critic"]
    layers = critic["params"]["VmapMLP_0"]
    flipped = {**layers, "Dense_2": jax.tree.map(jnp.negative, layers["Dense_2"])}
    state = state.replace(target_params={"critic": {"params": {"VmapMLP_0": flipped}}})
    data = _batch(jax.random.PRNGKey(1), n=64)
    obs = data["observations"]
    new, _ = jax.jit(lps.update)(state, data)
    net = qc.make_critic(state.config.critic)

    @jax.jit
    def value(actor_params):
        _, chunk = lps.steer(state, {**state.params, "actor": actor_params}, obs)
        return jnp.mean(net.apply(critic, obs, chunk), axis=0)

    gain = np.asarray(value(new.params["actor"]) - value(state.params["actor"]))
    assert float(np.mean(gain)) > 0 and np.mean(gain > 0) > 0.75, (np.mean(gain), np.mean(gain > 0))


def test_meanflow_error_reduce_mean_is_the_sum_over_d():
    """`error_reduce="mean"` (the authors' weighting) reports the chunk-averaged error, 1/d of the
    summed one, on the same draw."""
    from steerflow.generative import meanflow

    net = meanflow.make_net(meanflow.MeanFlowConfig(hidden=(16,)), 6)
    obs, acts = jax.random.normal(jax.random.PRNGKey(0), (8, 6)), jax.random.uniform(jax.random.PRNGKey(1), (8, 6))
    z = jax.random.normal(jax.random.PRNGKey(2), (8, 6))
    params = net.init(jax.random.PRNGKey(3), obs, z, jnp.zeros(8), jnp.ones(8))
    out = {r: meanflow.meanflow_loss(net.apply, params, obs, acts, z, jax.random.PRNGKey(4),
                                     meanflow.MeanFlowConfig(hidden=(16,), error_reduce=r))[1]
           for r in ("sum", "mean")}
    np.testing.assert_allclose(out["mean"]["mf_sq_err"] * 6, out["sum"]["mf_sq_err"], rtol=1e-5)
    with pytest.raises(ValueError, match="error_reduce"):
        meanflow.make_net(meanflow.MeanFlowConfig(error_reduce="median"), 6)


def test_fm_bptt_decoder_backpropagates_through_all_euler_steps():
    """FM-LPS's latent gradient differs from FM-1step's: the K steps are really differentiated."""
    grads = {}
    for decoder in ("fm-bptt", "fm-1step"):
        state = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, decoder=decoder))
        obs = _batch(jax.random.PRNGKey(1))["observations"]
        z = latent.sample_prior(jax.random.PRNGKey(2), (16, 6), "sphere")
        from steerflow.agents.common import base_policy

        base = base_policy(state.config, SPEC)
        grads[decoder] = jax.grad(lambda zz: jnp.sum(base.decode(state.params["base"], obs, zz) ** 2))(z)
    assert float(jnp.max(jnp.abs(grads["fm-bptt"] - grads["fm-1step"]))) > 1e-3


def test_unknown_switches_fail_with_the_choices_named():
    with pytest.raises(ValueError, match="decoder"):
        lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, decoder="ddim"))
    with pytest.raises(ValueError, match="geometry"):
        lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, geometry="cube"))
    with pytest.raises(ValueError, match="regularizer"):
        lpsd.init(jax.random.PRNGKey(0), SPEC, _config(lpsd, regularizer="kl"))


# ----------------------------------------------------------------------- sampling conventions

def test_flow_matching_time_convention_noise_at_zero_data_at_one():
    """For a point mass at c the exact FM field is v(x, τ) = (c − x)/(1 − τ): it has zero L_FM
    under our interpolation (noise at τ=0, data at τ=1) and K Euler steps carry any noise to c.
    The reversed convention would give a nonzero loss."""
    c = jnp.array([[0.3, -0.7]])
    exact = lambda params, obs, x, tau: (c - x) / (1.0 - tau[:, None])  # noqa: E731
    noise = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    actions = jnp.broadcast_to(c, (64, 2))
    loss, _ = flow.fm_loss(exact, None, jnp.zeros((64, 1)), actions, noise, jax.random.PRNGKey(1))
    assert float(loss) < 1e-8
    reversed_field = lambda params, obs, x, tau: (x - c) / tau[:, None]  # noqa: E731 (data at 0)
    bad, _ = flow.fm_loss(reversed_field, None, jnp.zeros((64, 1)), actions, noise, jax.random.PRNGKey(1))
    assert float(bad) > 0.1
    samples = flow.sample(exact, None, jnp.zeros((64, 1)), noise, steps=10)
    np.testing.assert_allclose(samples, actions, atol=1e-5)


def test_bc_fm_samples_fit_a_2d_mixture():
    """Two modes in [-1,1]^2, 10-step Euler samples from N(0, I) noise.

    Measured (3000 steps at lr 1e-3, seeds 0-2): 86-90% of samples within 0.2 of a mode, each
    mode 44-56%; an untrained net puts 2% there. Bounds leave a wide margin."""
    spec = EnvSpec(obs_dim=1, action_dim=2, horizon=1)
    modes = jnp.array([[0.6, 0.6], [-0.6, -0.6]])
    config = apply_overrides(bc_fm.Config(), {"*.hidden": (64, 64), "learning_rate": 1e-3})
    state = bc_fm.init(jax.random.PRNGKey(0), spec, config)

    def batch(key, n=256):
        k1, k2 = jax.random.split(key)
        return {"observations": jnp.zeros((n, 1)),
                "actions": modes[jax.random.randint(k1, (n,), 0, 2)] + 0.05 * jax.random.normal(k2, (n, 2))}

    def near(state):
        a = bc_fm.act(state, jnp.zeros((1000, 1)), jax.random.PRNGKey(7))
        dist = jnp.linalg.norm(a[:, None] - modes[None], axis=-1)
        return float(jnp.mean(jnp.min(dist, 1) < 0.2)), np.bincount(np.asarray(jnp.argmin(dist, 1)), minlength=2)

    before, _ = near(state)
    train = jax.jit(lambda s, k: jax.lax.scan(lambda s, k: (bc_fm.update(s, batch(k))[0], None), s,
                                              jax.random.split(k, 3000))[0])
    after, counts = near(train(state, jax.random.PRNGKey(1)))
    assert before < 0.1
    assert after > 0.7
    assert counts.min() > 0.35 * 1000


def test_cfgrl_with_zero_guidance_is_the_unconditional_sampler():
    state = cfgrl.init(jax.random.PRNGKey(0), SPEC, _config(cfgrl))
    state, _ = jax.jit(cfgrl.update)(state, _batch(jax.random.PRNGKey(1)))
    obs = _batch(jax.random.PRNGKey(2))["observations"]
    noise = jax.random.normal(jax.random.PRNGKey(3), (16, 6))
    _, _, net = cfgrl._nets(state.config, SPEC)
    null = jnp.full((16,), cfgrl.NULL)
    unconditional = flow.sample(lambda p, o, x, t: net.apply(p, o, x, t, null), state.params["base"], obs, noise,
                                state.config.flow.steps)
    np.testing.assert_allclose(cfgrl.guided_sample(state, obs, noise, 0.0), unconditional, atol=1e-5)
    optimal = jnp.full((16,), cfgrl.OPTIMAL)
    conditional = flow.sample(lambda p, o, x, t: net.apply(p, o, x, t, optimal), state.params["base"], obs, noise,
                              state.config.flow.steps)
    np.testing.assert_allclose(cfgrl.guided_sample(state, obs, noise, 1.0), conditional, atol=1e-5)
    assert float(jnp.max(jnp.abs(unconditional - conditional))) > 1e-4  # the label does matter


def test_cfgrl_labels_split_by_advantage_and_drop_to_null():
    state = cfgrl.init(jax.random.PRNGKey(0), SPEC, _config(cfgrl, label_dropout=0.0))
    labels = cfgrl.optimality_labels(state, _batch(jax.random.PRNGKey(1), 512), jax.random.PRNGKey(2))
    assert set(np.unique(np.asarray(labels))) <= {cfgrl.NOT_OPTIMAL, cfgrl.OPTIMAL}
    dropped = cfgrl.optimality_labels(state.replace(config=_config(cfgrl, label_dropout=0.5)),
                                      _batch(jax.random.PRNGKey(1), 4000), jax.random.PRNGKey(2))
    assert 0.45 < float(jnp.mean(dropped == cfgrl.NULL)) < 0.55


def test_qc_bon_acts_with_the_critics_best_candidate():
    state = qc_bon.init(jax.random.PRNGKey(0), SPEC, _config(qc_bon, num_samples=8))
    obs = _batch(jax.random.PRNGKey(1), 4)["observations"]
    key = jax.random.PRNGKey(5)
    cands = qc_bon.candidates(state, obs, key)  # (4, 8, d)
    q = qc.aggregate(qc.make_critic(state.config.critic).apply(
        state.params["critic"], jnp.repeat(obs, 8, axis=0), cands.reshape(32, 6)), state.config.critic).reshape(4, 8)
    chosen = qc_bon.act(state, obs, key)
    np.testing.assert_allclose(chosen, cands[jnp.arange(4), jnp.argmax(q, 1)], atol=1e-6)


def test_dsrl_latent_critic_tracks_the_action_critic_on_random_latents(seed=0):
    """DSRL's own NA loss, minimised over ψ alone (critic and EMA base held fixed), makes
    Q_ψ(s, w) track Q(s, D(s, w)) on fresh states and prior latents.

    Measured (400 Adam steps, seeds 0-2): correlation −0.11-0.19 before, 0.93-0.96 after, relative
    RMSE 0.27-0.36 after. Bounds: |corr| < 0.5 before, > 0.85 after, relative RMSE < 0.5."""
    config = _config(dsrl_na, **{"*.hidden": (64, 64)})
    state = dsrl_na.init(jax.random.PRNGKey(seed), SPEC, config)
    critic = qc.make_critic(config.critic)
    tx = optax.adam(1e-3)

    @jax.jit
    def step(carry, key):
        params, opt = carry
        k1, k2 = jax.random.split(key)
        obs = jax.random.normal(k1, (128, 6))
        grads = jax.grad(lambda p: dsrl_na.latent_critic_loss(state, p, obs, k2)[0])(params)
        updates, opt = tx.update(grads["latent_critic"], opt)
        return ({**params, "latent_critic": optax.apply_updates(params["latent_critic"], updates)}, opt), None

    def agreement(params):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed + 42))
        obs, w = jax.random.normal(k1, (1000, 6)), latent.sample_prior(k2, (1000, 6), "sphere")
        target = jnp.mean(critic.apply(params["critic"], obs, dsrl_na.decode(state, obs, w)), 0)
        fitted = jnp.mean(critic.apply(params["latent_critic"], obs, w), 0)
        return np.corrcoef(fitted, target)[0, 1], float(jnp.sqrt(jnp.mean((fitted - target) ** 2)) / jnp.std(target))

    before, _ = agreement(state.params)
    carry = (state.params, tx.init(state.params["latent_critic"]))
    (params, _), _ = jax.lax.scan(step, carry, jax.random.split(jax.random.PRNGKey(seed + 3), 400))
    after, rel_err = agreement(params)
    assert abs(before) < 0.5
    assert after > 0.85
    assert rel_err < 0.5


def test_every_agent_meets_the_contract_and_only_qpilots_lack_explicit_noise():
    """`agents.common.Agent` / `ExplicitNoiseAgent`: what the trainer and `policy.load` rely on."""
    import types

    from steerflow.agents import AGENTS
    from steerflow.agents.common import Agent, ExplicitNoiseAgent

    assert all(isinstance(module, Agent) for module in AGENTS.values())
    served = {name for name, module in AGENTS.items() if isinstance(module, ExplicitNoiseAgent)}
    assert set(AGENTS) - served == {"qpilots-u", "qpilots-m"}
    incomplete = types.SimpleNamespace(**{k: getattr(AGENTS["lps"], k) for k in ("Config", "init", "act")})
    assert not isinstance(incomplete, Agent)  # no update


# ----------------------------------------------------------------------- LPS inference-time selection

def _trained_lps(**overrides):
    state = lps.init(jax.random.PRNGKey(0), SPEC, _config(lps, **overrides))
    for i in range(3):  # a critic that ranks chunks differently from its initialisation
        state, _ = jax.jit(lps.update)(state, _batch(jax.random.PRNGKey(10 + i)))
    return state


def test_lps_selection_keeps_the_chunk_the_pessimistic_critic_ranks_first_among_the_actors_and_its_neighbours():
    state = _trained_lps(select=8, select_sigma=0.5)
    obs = _batch(jax.random.PRNGKey(2))["observations"]
    noise = jax.random.normal(jax.random.PRNGKey(3), (16, 8, SPEC.chunk_dim))
    chosen = lps.act_noise(state, obs, noise)
    latents, own = lps.steer(state, state.params, obs)  # the candidates, built here from the docstring
    near = latent.project_to_sphere(latents[:, None] + 0.5 * noise)
    decoded = lps.base_policy(state.config, SPEC).decode(state.params["base"], jnp.repeat(obs, 8, 0), near.reshape(-1, 6))
    cands = jnp.clip(jnp.concatenate([own[:, None], decoded.reshape(16, 8, 6)], 1), -1, 1)
    q = qc.make_critic(state.config.critic).apply(state.params["critic"], jnp.repeat(obs, 9, 0), cands.reshape(-1, 6))
    score = jnp.min(q, 0).reshape(16, 9)  # the pessimistic (min) rank
    best = jnp.argmax(score, 1)
    np.testing.assert_allclose(chosen, cands[jnp.arange(16), best], atol=1e-6)
    assert int(jnp.sum(best > 0)) > 0 and int(jnp.sum(best == 0)) < 16  # some neighbour beat the actor
    plain = lps.act_noise(state, obs)
    np.testing.assert_allclose(plain, cands[:, 0], atol=1e-6)  # no noise: the actor's own chunk
    wide = lps.act(state, obs, jax.random.PRNGKey(4))  # act draws its own N perturbations
    assert wide.shape == (16, 6) and not np.allclose(wide, plain)


def test_lps_selection_at_zero_spread_is_the_actors_chunk_and_never_changes_training():
    on, off = _trained_lps(select=8, select_sigma=0.0), _trained_lps()
    obs = _batch(jax.random.PRNGKey(2))["observations"]
    np.testing.assert_allclose(lps.act(on, obs, jax.random.PRNGKey(4)), lps.act(off, obs), atol=1e-5)  # batch rounding
    wide = _trained_lps(select=8, select_sigma=1.0)  # a' never selects: the same training
    for a, b in zip(jax.tree.leaves(wide.params), jax.tree.leaves(off.params)):
        np.testing.assert_array_equal(a, b)
    assert lps.noise_spec(off.config, SPEC) is None and lps.noise_spec(wide.config, SPEC) == ((8, 6), "normal")
    with pytest.raises(ValueError, match="select_rank"):
        _trained_lps(select_rank="max")


def test_act_only_fields_exist_and_do_not_change_the_networks():
    """Every INFERENCE_KEYS field is a Config field, and a state built with it changed has the same
    parameter tree (so `steerflow eval --set` can load a trained checkpoint into it)."""
    changed = {"select": 4, "select_sigma": 0.1, "select_rank": "mean", "alpha": 0.7, "num_samples": 3,
               "num_posterior_samples": 2, "tilt": 2.0}
    for name, module in AGENTS.items():
        keys = getattr(module, "INFERENCE_KEYS", ())
        for key in keys:
            assert has_field(module.Config(), key), (name, key)
        if keys:
            a = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), SPEC, _config(module)))
            b = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), SPEC,
                                                   _config(module, **{k: changed[k] for k in keys})))
            assert jax.tree.structure(a.params) == jax.tree.structure(b.params), name
            assert [x.shape for x in jax.tree.leaves(a.params)] == [x.shape for x in jax.tree.leaves(b.params)], name
