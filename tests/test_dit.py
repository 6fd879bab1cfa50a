"""The DiT base option (`base.arch=dit`, `flow.arch=dit`): shapes, adaLN-Zero start, that the
state, the times and every chunk position reach the output after training, and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from steerflow.dit import DiTConfig, DiTField, check


def test_dit_starts_at_zero_and_learns_to_use_state_time_and_every_position():
    net = DiTField(out_dim=10, cond_hidden=(32,), config=DiTConfig(tokens=5, width=16, depth=2, heads=2, time_features=8))
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    obs, x, t = jax.random.normal(k[0], (64, 3)), jax.random.normal(k[1], (64, 10)), jax.random.uniform(k[2], (64,))
    params = net.init(k[3], obs, x, t)
    apply = jax.jit(net.apply)
    assert apply(params, obs, x, t).shape == (64, 10)
    assert np.allclose(apply(params, obs, x, t), 0.0)  # zero-initialised read-out (adaLN-Zero)
    # a target that needs the state, the time and each position's own input
    target = x[:, ::-1] * obs[:, :1] + t[:, None]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply(p, obs, x, t) - target) ** 2))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(200):
        params, state, loss = step(params, state)
        first = loss if first is None else first
    assert loss < 0.5 * first
    base = apply(params, obs, x, t)
    for name, args in (("obs", (obs + 1.0, x, t)), ("time", (obs, x, t * 0.0))):
        assert not np.allclose(apply(params, *args), base, atol=1e-3), name
    for pos in range(5):  # changing one token's input changes the output
        x2 = x.at[:, 2 * pos:2 * pos + 2].add(1.0)
        assert not np.allclose(apply(params, obs, x2, t), base, atol=1e-3), pos


@pytest.mark.parametrize("arch,dit,width,message", [
    ("transformer", DiTConfig(), 25, "unknown arch"),
    ("dit", DiTConfig(tokens=3), 25, "does not divide the chunk width 25"),
    ("dit", DiTConfig(width=30, heads=4), 25, "not a multiple of dit.heads"),
])
def test_bad_dit_configs_are_named(arch, dit, width, message):
    with pytest.raises(ValueError, match=message):
        check(arch, dit, width)


def test_the_cli_takes_the_dit_base_for_the_meanflow_and_fm_agents():
    from steerflow import train as trainer

    for agent, key in (("lps", "base"), ("bc-mf", "base"), ("dsrl-na", "base"), ("bc-fm", "flow"), ("qc-fql", "flow")):
        run = trainer.RunSpec(agent=agent, task="cube-single-task2", seeds=[0], preset="smoke",
                              overrides={f"{key}.arch": "dit"})
        _, config, _ = trainer.check_run(run)
        assert getattr(config, key).arch == "dit"
    with pytest.raises(ValueError, match="does not divide"):
        trainer.check_run(trainer.RunSpec(agent="lps", task="cube-single-task2", seeds=[0], preset="smoke",
                                          overrides={"base.arch": "dit", "base.dit.tokens": "3"}))
