"""The 2-D toy study of the LPS paper (§III-C, Figures 2 and 3), on the project's own agents.

Task (`studies.toy_task`): one state (obs = 0, obs_dim 1), one step (H = 1, γ = 0, every
transition terminal), so the critic is a regression of the reward and "acting well" means
picking a good 2-D action.
    behaviour  a ~ equal-weight mixture of three Gaussian blobs (std `MODE_STD`) on the anti-diagonal,
               at (−0.6, 0.6), (0, 0) and (0.6, −0.6): the top-right and bottom-left of [-1, 1]²
               stay empty
    reward     r(a) = exp(−‖a − (1, 1)‖² / (2·0.6²)), concentrated at the empty top-right corner,
               so the best in-support actions (the centre blob's upper-right edge, r ≈ 0.16) are
               not the best actions overall (r = 1)
    support    an action is "outside the data" when its nearest dataset action is farther than
               `ToyConfig.support_radius`

Figure 2 (`fig2_alpha.png`), one row per family, each panel's mean reward and off-data share:
QC-FQL across its regularisation weight α next to its BC-FM base; BC-MF, DSRL-NA and LPS; and
QPILOTS-U and QPILOTS-M across their steering coefficient α, from α = 0 (the base's own samples).
QPILOTS steers only at inference time, so one QPILOTS-U and one QPILOTS-M per seed are trained and
sampled at every α by changing `config.alpha` in the trained state (`steered_actions`).
Figure 3 (`fig3_latent_critic.png`): on DSRL-NA's own FM base D (latent z ~ N(0, I) in R², decoded
by K Euler steps), the action critic pulled back into latent space, Q(s, D(z)), against DSRL's
distilled latent critic Q_ψ(s, z), and the cosine similarity of their z-gradients.

Every method is the project's agent (`steerflow.agents`), trained by the project's jitted trainer
(`train.make_train_call`) on the toy transitions, all seeds vmapped. Shapes: actions (N, 2),
latents (N, 2), per-seed results (S, ...), QPILOTS panels (A, S, N, 2) over A values of α.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from steerflow.studies.toy_task import MODES, SPEC_DIMS, make_transitions, reward, support_distance

__all__ = ["MODES", "SPEC_DIMS", "ToyConfig", "agent_config", "make_transitions", "reward", "run_study",
           "support_distance", "main"]

# γ = 0 and terminal transitions make QPILOTS' TD target r whatever its steered a' sampler returns
# (y = r + γ·m·Q̄'(s', a')), so it trains with a one-step sampler: the same parameters (bitwise,
# measured over 50 updates) without the K-step steered a', ~85% of an update's cost at K = 10.
# Sampling restores K to the library default, the K of every other FM sampler in the study.
QPILOTS_TRAIN_STEPS = 1


@dataclass(frozen=True)
class ToyConfig:
    data_seed: int = 0
    num_data: int = 2000  # behaviour transitions
    seeds: tuple[int, ...] = (0, 1, 2)  # agent seeds, vmapped per method
    steps: int = 3000  # updates per method
    batch_size: int = 128
    alphas: tuple[float, ...] = (0.01, 1.0, 100.0)  # QC-FQL's regularisation weights
    support_radius: float = 0.1  # "outside the data" beyond this distance to the nearest data action
    num_actions: int = 256  # actions sampled per seed for stochastic policies
    base_hidden: tuple[int, ...] = (128, 128, 128)  # MeanFlow base (LPS)
    flow_hidden: tuple[int, ...] = (128, 128)  # flow-matching base (QC-FQL's teacher, DSRL's decoder)
    critic_hidden: tuple[int, ...] = (64, 64)  # action critics and DSRL's latent critic
    actor_hidden: tuple[int, ...] = (64, 64)  # latent actors and QC-FQL's one-step actor
    equal_fraction: float = 0.25  # MeanFlow's share of r = t pairs (paper: 0.75; 2-D fits better lower)
    learning_rate: float = 1e-3
    qpilots_alphas: tuple[float, ...] = (0.1, 0.5, 2.0)  # QPILOTS' steering coefficients, shown with α = 0
    qpilots_critics: int = 2  # QPILOTS' ensemble size J (paper: 10, ~2-3x the update cost here)
    qpilots_steps: int = 1000  # QPILOTS' updates (at most `steps`; a QPILOTS-M worker is ~75% compile)
    qpilots_own_u: bool = False  # False: QPILOTS-U steers QPILOTS-M's trained base and critic (`methods`)
    updates_per_call: int = 250  # progress-bar granularity


def agent_config(name: str, toy: ToyConfig, **overrides):
    """The agent's own Config at toy size: small nets (QPILOTS-M's meta flow map as large as the FM
    base), γ = 0, a faster learning rate."""
    from steerflow.agents import get_agent
    from steerflow.config import apply_overrides
    from steerflow.train import has_field

    config = get_agent(name).Config()
    toy_size = {"base.hidden": toy.base_hidden, "flow.hidden": toy.flow_hidden, "mfm.hidden": toy.flow_hidden,
                "critic.hidden": toy.critic_hidden, "actor_hidden": toy.actor_hidden,
                "base.equal_fraction": toy.equal_fraction, "critic.discount": 0.0, "learning_rate": toy.learning_rate}
    present = {k: v for k, v in toy_size.items() if has_field(config, k.split(".")[0])}
    return apply_overrides(config, present | overrides)


# ----------------------------------------------------------------------------- training

class Method(NamedTuple):
    label: str  # label in figures and tables
    agent: str  # registry name
    overrides: dict  # Config overrides on top of `agent_config`'s toy size
    steps: int  # updates


@dataclass
class Trained:
    name: str  # label in figures and tables
    agent: str  # registry name
    states: object  # AgentState with a leading seed axis
    seconds: float

    @property
    def module(self):
        from steerflow.agents import get_agent

        return get_agent(self.agent)


def _calls(m: Method, toy: ToyConfig) -> int:
    return -(-m.steps // toy.updates_per_call)


def train_method(m: Method, toy: ToyConfig, data: dict, progress=None) -> Trained:
    """Train one method on the toy data with every seed vmapped, through the project's jitted
    trainer; `progress(n)` is told of every `n` updates done."""
    import jax

    from steerflow.agents import get_agent
    from steerflow.agents.common import EnvSpec
    from steerflow.data.chunks import build_chunk_dataset
    from steerflow.train import make_train_call

    start = time.perf_counter()
    module, config, spec = get_agent(m.agent), agent_config(m.agent, toy, **m.overrides), EnvSpec(**SPEC_DIMS)
    ds = build_chunk_dataset(data, horizon=1, discount=0.0)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(np.asarray(toy.seeds))
    states = jax.vmap(lambda k: module.init(k, spec, config))(keys[:, 0])
    train_call, loop_keys = make_train_call(module, toy.batch_size, toy.updates_per_call), keys[:, 1]
    for _ in range(_calls(m, toy)):
        states, loop_keys, _ = train_call(states, loop_keys, ds)
        if progress is not None:
            progress(toy.updates_per_call)
    return Trained(m.label, m.agent, jax.device_get(states), time.perf_counter() - start)


def _train_in_worker(queue, *args) -> Trained:
    return train_method(*args, progress=queue.put)


def train_all(methods: list[Method], toy: ToyConfig, data: dict, workers: int = 2,
              quiet: bool = False) -> list[Trained]:
    """Train every method; with `workers` > 1, in that many single-threaded processes at once
    (small networks barely use a second thread, so two processes on 2 cores train ~2x faster)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from queue import Empty

    from tqdm import tqdm

    from steerflow.train import single_thread_env

    total = sum(_calls(m, toy) for m in methods) * toy.updates_per_call
    bar = tqdm(total=total, desc="toy: training", unit="upd", disable=quiet, dynamic_ncols=True, smoothing=0)
    if workers <= 1:
        trained = [train_method(m, toy, data, progress=bar.update) for m in methods]
        bar.close()
        return trained
    saved = dict(os.environ)
    os.environ.update(single_thread_env())  # inherited by the spawned workers only
    try:
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            queue = manager.Queue()
            futures = [pool.submit(_train_in_worker, queue, m, toy, data) for m in methods]
            while not all(f.done() for f in futures):
                try:
                    bar.update(queue.get(timeout=0.5))
                except Empty:
                    pass
            trained = [f.result() for f in futures]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    bar.update(total - bar.n)
    bar.close()
    return trained


def sample_actions(t: Trained, toy: ToyConfig, key) -> np.ndarray:
    """(S, num_actions, 2) actions of every seed (deterministic policies repeat one action)."""
    import jax
    import jax.numpy as jnp

    obs = jnp.zeros((toy.num_actions, SPEC_DIMS["obs_dim"]))
    keys = jax.random.split(key, len(toy.seeds))
    return np.asarray(jax.vmap(lambda s, k: t.module.act(s, obs, k))(t.states, keys))


def base_actions(t: Trained, toy: ToyConfig, key) -> np.ndarray:
    """Behaviour cloning as the method itself learned it: BC-MF's `act` (its base decoding fresh
    prior latents) on the method's state (LPS: BC-MF; QC-FQL: BC-FM), (S, num_actions, 2)."""
    import jax
    import jax.numpy as jnp

    from steerflow.agents import bc_mf

    obs = jnp.zeros((toy.num_actions, SPEC_DIMS["obs_dim"]))
    keys = jax.random.split(key, len(toy.seeds))
    return np.asarray(jax.vmap(lambda s, k: bc_mf.act(s, obs, k))(t.states, keys))


def qpilots_alphas(toy: ToyConfig) -> tuple[float, ...]:
    """α = 0 (the base's own sampler, `qpilots_u`: exactly BC-FM's) and the study's grid."""
    return (0.0, *toy.qpilots_alphas)


def steered_actions(states, agent: str, toy: ToyConfig, key) -> np.ndarray:
    """(A, S, num_actions, 2) actions of QPILOTS `agent`'s sampler at every α of `qpilots_alphas`
    on trained `states` (seed axis first): the one state per seed with its config's α replaced
    (and K restored, `QPILOTS_TRAIN_STEPS`). The same key at every α, so the same prior noises:
    α alone moves the actions."""
    import jax
    import jax.numpy as jnp

    from steerflow.agents import get_agent
    from steerflow.generative.flow import FlowConfig

    act = get_agent(agent).act
    obs = jnp.zeros((toy.num_actions, SPEC_DIMS["obs_dim"]))
    keys = jax.random.split(key, len(toy.seeds))
    trained = states.config
    sampling = dataclasses.replace(trained, flow=dataclasses.replace(trained.flow, steps=FlowConfig().steps))

    def at_alpha(states, alpha):
        # α traced, so one compile serves the whole grid (the agents use α only arithmetically);
        # the config is static, so it is replaced inside the vmap, on each seed's state
        return jax.vmap(lambda s, k: act(s.replace(config=dataclasses.replace(sampling, alpha=alpha)), obs, k))(
            states, keys)

    grid = jnp.asarray(qpilots_alphas(toy), jnp.float32)
    return np.asarray(jax.jit(jax.vmap(at_alpha, in_axes=(None, 0)))(states, grid))


def sphere_image(t: Trained, num: int = 720) -> np.ndarray:
    """(S, num, 2): the base decoding `num` evenly spaced latents of the sphere of radius √2 (in
    d = 2 a circle), i.e. every action an LPS latent actor can choose."""
    import jax
    import jax.numpy as jnp

    from steerflow.agents.common import base_policy

    config, spec = t.states.config, t.states.spec
    angles = jnp.linspace(0.0, 2 * jnp.pi, num, endpoint=False)
    z = jnp.sqrt(2.0) * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
    obs = jnp.zeros((num, spec.obs_dim))

    def decode(state):
        return jnp.clip(base_policy(config, spec).decode(state.params["base"], obs, z), -1.0, 1.0)

    return np.asarray(jax.vmap(decode)(t.states))


def action_stats(actions: np.ndarray, data_actions: np.ndarray, support_radius: float) -> dict:
    """Mean reward and fraction outside the data, overall and per seed, of (S, N, 2) actions."""
    rewards, distance = reward(actions), support_distance(actions, data_actions)
    outside = distance > support_radius
    return {"mean_reward": float(rewards.mean()), "outside_support": float(outside.mean()),
            "mean_reward_per_seed": rewards.mean(1).round(4).tolist(),
            "outside_support_per_seed": outside.mean(1).round(4).tolist(),
            "max_support_distance_per_seed": distance.max(1).round(4).tolist()}


# ----------------------------------------------------------------------------- Figure 3

def latent_critics(state):
    """For one DSRL-NA state: functions z ↦ Q(s, D(s, z)) (pulled back through the EMA base) and
    z ↦ Q_ψ(s, z) (distilled), each the ensemble mean, on latents (N, 2)."""
    import jax.numpy as jnp

    from steerflow import critic as qc
    from steerflow.agents import dsrl_na

    critic = qc.make_critic(state.config.critic)

    def pulled_back(z):
        obs = jnp.zeros((z.shape[0], state.spec.obs_dim))
        return jnp.mean(critic.apply(state.params["critic"], obs, dsrl_na.decoder_map(state, obs, z)), 0)

    def distilled(z):
        obs = jnp.zeros((z.shape[0], state.spec.obs_dim))
        return jnp.mean(critic.apply(state.params["latent_critic"], obs, z), 0)

    return pulled_back, distilled


def gradient_cosine(state, z):
    """Cosine similarity (N,) between ∇_z Q(s, D(s, z)) and ∇_z Q_ψ(s, z), plus both values."""
    import jax
    import jax.numpy as jnp

    pulled_back, distilled = latent_critics(state)
    g_pb = jax.grad(lambda z: jnp.sum(pulled_back(z)))(z)  # rows independent: sum gives per-row grads
    g_d = jax.grad(lambda z: jnp.sum(distilled(z)))(z)
    cos = jnp.sum(g_pb * g_d, -1) / (jnp.linalg.norm(g_pb, axis=-1) * jnp.linalg.norm(g_d, axis=-1) + 1e-12)
    return cos, pulled_back(z), distilled(z)


def latent_study(t: Trained, toy: ToyConfig, key, num_latents: int = 4096) -> dict:
    """Per seed: mean cosine on prior latents z ~ N(0, I), and how well Q_ψ matches the values."""
    import jax

    z = jax.random.normal(key, (num_latents, SPEC_DIMS["action_dim"]))
    cos, q_pb, q_d = jax.vmap(lambda s: gradient_cosine(s, z))(t.states)
    cos, q_pb, q_d = np.asarray(cos), np.asarray(q_pb), np.asarray(q_d)
    corr = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(q_pb, q_d)]
    rel_rmse = [float(np.sqrt(np.mean((a - b) ** 2)) / (np.std(a) + 1e-12)) for a, b in zip(q_pb, q_d)]
    return {"mean_cosine": float(cos.mean()), "mean_cosine_per_seed": cos.mean(1).round(4).tolist(),
            "fraction_cosine_below_0.5": float((cos < 0.5).mean()),
            "value_correlation_per_seed": np.round(corr, 4).tolist(),
            "value_relative_rmse_per_seed": np.round(rel_rmse, 4).tolist()}


def latent_maps(t: Trained, grid: int = 121, window: float = 3.0) -> dict:
    """Figure 3's heat maps for seed 0 on a grid × grid lattice of the latent window [−window,
    window]²: the gradient cosine, Q(s, D(z)) and Q_ψ(s, z), each (grid, grid), rows along z₂."""
    import jax
    import jax.numpy as jnp

    state = jax.tree.map(lambda x: x[0], t.states)  # seed 0
    zs = np.linspace(-window, window, grid)
    z = jnp.asarray(np.stack(np.meshgrid(zs, zs), -1).reshape(-1, 2), jnp.float32)
    cos, q_pb, q_d = (np.asarray(x).reshape(grid, grid) for x in jax.jit(gradient_cosine)(state, z))
    return {"window": window, "cosine": cos, "pulled_back": q_pb, "distilled": q_d}


# ----------------------------------------------------------------------------- the study

def methods(toy: ToyConfig) -> list[Method]:
    """Every method trained, the slowest first so that two workers finish close together.

    QPILOTS trains once per seed, its α only steers sampling (`steered_actions`). QPILOTS-M's
    state holds all QPILOTS-U samples from (base, target base, target critic; its own loss adds only
    the MFM's), so by default QPILOTS-U's Tweedie steering runs on QPILOTS-M's trained networks:
    the two rows then differ by the steering gradient alone, and the study saves a QPILOTS-U worker
    (~30 s on one core, two thirds of it compilation) to stay within 3 minutes on 2 cores. The one
    difference from QPILOTS-U's own training is the joint gradient clipping, which there sees no MFM
    gradient; `qpilots_own_u=True` trains it separately."""
    qc_fql = [Method(f"QC-FQL α={a:g}", "qc-fql", {"alpha": a}, toy.steps) for a in toy.alphas]
    qpilots = {"critic.num_critics": toy.qpilots_critics, "flow.steps": QPILOTS_TRAIN_STEPS}
    steps = min(toy.steps, toy.qpilots_steps)
    own_u = [Method("QPILOTS-U", "qpilots-u", qpilots, steps)] if toy.qpilots_own_u else []
    return [Method("DSRL-NA", "dsrl-na", {"geometry": "normal"}, toy.steps), *qc_fql,
            Method("QPILOTS-M", "qpilots-m", qpilots, steps), Method("LPS", "lps", {}, toy.steps), *own_u]


def steered_panels(trained: list[Trained], toy: ToyConfig, key) -> dict[str, np.ndarray]:
    """{"QPILOTS-U α=a" and "QPILOTS-M α=a": (S, num_actions, 2)} for every α of `qpilots_alphas`,
    QPILOTS-U on its own state or on QPILOTS-M's (`methods`)."""
    by_label = {t.name: t for t in trained}
    panels = {}
    for label in ("QPILOTS-U", "QPILOTS-M"):
        t = by_label.get(label, by_label["QPILOTS-M"])
        per_alpha = steered_actions(t.states, label.lower(), toy, key)
        panels |= {f"{label} α={a:g}": actions for a, actions in zip(qpilots_alphas(toy), per_alpha)}
    return panels


def run_study(toy: ToyConfig = ToyConfig(), workers: int = 2, quiet: bool = False) -> dict:
    """Train every method, measure the numbers behind both figures; returns them with the states."""
    import jax

    data = make_transitions(toy.data_seed, toy.num_data)
    start = time.perf_counter()
    trained = train_all(methods(toy), toy, data, workers=workers, quiet=quiet)
    key = jax.random.PRNGKey(12345)
    by_label = {t.name: t for t in trained}
    regularised = [t for t in trained if t.agent == "qc-fql"]
    steered_rows = [[f"{name} α={a:g}" for a in qpilots_alphas(toy)] for name in ("QPILOTS-U", "QPILOTS-M")]
    rows = [["BC-FM (QC-FQL's base)"] + [t.name for t in regularised],
            ["BC-MF (LPS's base)"] + [t.name for t in trained if t.agent in ("dsrl-na", "lps")], *steered_rows]
    most_regularised = max(regularised, key=lambda t: t.states.config.alpha)
    actions = {"BC-FM (QC-FQL's base)": base_actions(most_regularised, toy, key),
               "BC-MF (LPS's base)": base_actions(by_label["LPS"], toy, key)}
    actions |= {t.name: sample_actions(t, toy, key) for t in trained if not t.agent.startswith("qpilots")}
    actions |= steered_panels(trained, toy, key)
    stats = {name: action_stats(actions[name], data["actions"], toy.support_radius) for row in rows for name in row}
    reachable = {"LPS": sphere_image(by_label["LPS"])}  # (S, 720, 2)
    stats["LPS"]["best_reachable_reward_per_seed"] = reward(reachable["LPS"]).max(1).round(4).tolist()
    dsrl = next(t for t in trained if t.agent == "dsrl-na")
    latent = latent_study(dsrl, toy, jax.random.PRNGKey(54321))
    best_in_support = float(reward(data["actions"]).max())
    return {"toy": asdict(toy), "data": data, "trained": trained, "actions": actions, "rows": rows, "reachable": reachable,
            "figure2": stats, "figure3": latent, "latent_maps": latent_maps(dsrl),
            "reference": {"best_data_reward": best_in_support, "data_mean_reward": float(data["rewards"].mean()),
                          "corner_reward": 1.0},
            "seconds": {"total_training": round(time.perf_counter() - start, 1),
                        **{t.name: round(t.seconds, 1) for t in trained}}}


def print_tables(result: dict) -> None:
    ref = result["reference"]
    print(f"\nFigure 2: where the actions land (reward r(a) in [0, 1]; dataset mean {ref['data_mean_reward']:.3f}, "
          f"best dataset action {ref['best_data_reward']:.3f}, empty corner 1.0)")
    print(f"{'method':<22} {'mean reward':>11} {'outside data':>12}   per-seed reward")
    for name, s in result["figure2"].items():
        print(f"{name:<22} {s['mean_reward']:>11.3f} {s['outside_support']:>11.1%}   {_fmt(s['mean_reward_per_seed'])}")
    lps = result["figure2"]["LPS"]
    print(f"LPS per seed: {_fmt(lps['mean_reward_per_seed'])}; best action its base decodes on the sphere "
          f"(all it can reach): {_fmt(lps['best_reachable_reward_per_seed'])}")
    f3 = result["figure3"]
    print("\nFigure 3: DSRL-NA's distilled latent critic vs the action critic pulled back through its base")
    print(f"mean cosine(∇z Q(D(z)), ∇z Q_ψ(z)) on z ~ N(0, I): {f3['mean_cosine']:.3f} "
          f"(per seed {_fmt(f3['mean_cosine_per_seed'])}); "
          f"cosine < 0.5 on {f3['fraction_cosine_below_0.5']:.1%} of latents")
    print(f"value agreement per seed: correlation {_fmt(f3['value_correlation_per_seed'])}, "
          f"relative RMSE {_fmt(f3['value_relative_rmse_per_seed'])}")


def _fmt(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def main(out: Path, toy: ToyConfig = ToyConfig(), workers: int = 2) -> dict:
    from steerflow.studies.toy_plots import plot_figure2, plot_figure3

    start = time.perf_counter()
    result = run_study(toy, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    files = [plot_figure2(result, out / "fig2_alpha.png"), plot_figure3(result, out / "fig3_latent_critic.png")]
    summary = {k: result[k] for k in ("toy", "figure2", "figure3", "reference", "seconds")}
    summary["seconds"]["total"] = round(time.perf_counter() - start, 1)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "summary.json")
    print_tables(result)
    print(f"\ntoy study done in {summary['seconds']['total']:.0f} s -> {', '.join(str(f) for f in files)}, "
          f"{out / 'summary.json'}")
    return result
