"""The 2-D toy study of the LPS paper (§III-C, Figures 2 and 3), on the project's own agents.

Task: one state (obs = 0, obs_dim 1), one step (H = 1, γ = 0, every transition terminal), so the
critic is a regression of the reward and "acting well" means picking a good 2-D action.
    behaviour  a ~ equal-weight mixture of three Gaussian blobs (std `MODE_STD`) on the anti-diagonal,
               at (−0.6, 0.6), (0, 0) and (0.6, −0.6): the top-right and bottom-left of [-1, 1]²
               stay empty
    reward     r(a) = exp(−‖a − (1, 1)‖² / (2·0.6²)), concentrated at the empty top-right corner,
               so the best in-support actions (the centre blob's upper-right edge, r ≈ 0.16) are
               not the best actions overall (r = 1)
    support    an action is "outside the data" when its nearest dataset action is farther than
               `ToyConfig.support_radius`

Figure 2 (`fig2_alpha.png`): where QC-FQL's actions land for α from small to large, next to BC,
DSRL-NA and LPS. Figure 3 (`fig3_latent_critic.png`): on DSRL-NA's own FM base D (latent z ~ N(0, I)
in R², decoded by K Euler steps), the action critic pulled back into latent space, Q(s, D(z)),
against DSRL's distilled latent critic Q_ψ(s, z), and the cosine similarity of their z-gradients.

Every method is the project's agent (`steerflow.agents`), trained by the project's jitted trainer
(`train.make_train_call`) on the toy transitions, all seeds vmapped. Shapes: actions (N, 2),
latents (N, 2), per-seed results (S, ...).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Three equal-weight Gaussian blobs on the anti-diagonal: the top-right and bottom-left halves of
# the square stay empty, the centre blob holds the best in-support actions, and the straight
# paths between blobs (where a smooth generator interpolates) are worse than the centre blob.
MODES = ((-0.6, 0.6), (0.0, 0.0), (0.6, -0.6))
MODE_STD = 0.1
REWARD_CENTRE = (1.0, 1.0)
REWARD_WIDTH = 0.6
SPEC_DIMS = dict(obs_dim=1, action_dim=2, horizon=1)


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
    updates_per_call: int = 250  # progress-bar granularity


def reward(actions: np.ndarray) -> np.ndarray:
    """r(a) for actions (..., 2)."""
    sq = np.sum((np.asarray(actions) - np.asarray(REWARD_CENTRE)) ** 2, -1)
    return np.exp(-sq / (2 * REWARD_WIDTH**2))


def make_transitions(seed: int, n: int) -> dict:
    """n single-step transitions from the behaviour mixture, each its own (terminal) trajectory."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(MODES)[rng.integers(0, len(MODES), n)]
    actions = np.clip(centres + MODE_STD * rng.standard_normal((n, 2)), -1.0, 1.0).astype(np.float32)
    obs = np.zeros((n, SPEC_DIMS["obs_dim"]), np.float32)
    return {"observations": obs, "actions": actions, "rewards": reward(actions).astype(np.float32),
            "masks": np.zeros(n, np.float32), "next_observations": obs, "terminals": np.ones(n, np.float32)}


def support_distance(actions: np.ndarray, data_actions: np.ndarray) -> np.ndarray:
    """Distance from each action (..., 2) to its nearest dataset action."""
    flat = actions.reshape(-1, 2)
    d = np.sqrt(((flat[:, None, :] - data_actions[None, :, :]) ** 2).sum(-1)).min(1)
    return d.reshape(actions.shape[:-1])


def agent_config(name: str, toy: ToyConfig, **overrides):
    """The agent's own Config at toy size: small nets, γ = 0, a faster learning rate."""
    from steerflow.agents import get_agent
    from steerflow.config import apply_overrides
    from steerflow.train import _has_field

    config = get_agent(name).Config()
    toy_size = {"base.hidden": toy.base_hidden, "flow.hidden": toy.flow_hidden, "critic.hidden": toy.critic_hidden,
                "actor_hidden": toy.actor_hidden, "base.equal_fraction": toy.equal_fraction,
                "critic.discount": 0.0, "learning_rate": toy.learning_rate}
    present = {k: v for k, v in toy_size.items() if _has_field(config, k.split(".")[0])}
    return apply_overrides(config, present | overrides)


# ----------------------------------------------------------------------------- training

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


def train_method(label: str, name: str, overrides: dict, toy: ToyConfig, data: dict, progress=None) -> Trained:
    """Train one (label, agent, overrides) on the toy data with every seed vmapped, through the
    project's jitted trainer; `progress(n)` is told of every `n` updates done."""
    import jax

    from steerflow.agents import get_agent
    from steerflow.agents.common import EnvSpec
    from steerflow.data.chunks import build_chunk_dataset
    from steerflow.train import make_train_call

    start = time.perf_counter()
    module, config, spec = get_agent(name), agent_config(name, toy, **overrides), EnvSpec(**SPEC_DIMS)
    ds = build_chunk_dataset(data, horizon=1, discount=0.0)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(np.asarray(toy.seeds))
    states = jax.vmap(lambda k: module.init(k, spec, config))(keys[:, 0])
    train_call, loop_keys = make_train_call(module, toy.batch_size, toy.updates_per_call), keys[:, 1]
    for _ in range(-(-toy.steps // toy.updates_per_call)):
        states, loop_keys, _ = train_call(states, loop_keys, ds)
        if progress is not None:
            progress(toy.updates_per_call)
    return Trained(label, name, jax.device_get(states), time.perf_counter() - start)


def _train_in_worker(queue, *args) -> Trained:
    return train_method(*args, progress=queue.put)


def train_all(methods: list[tuple[str, str, dict]], toy: ToyConfig, data: dict, workers: int = 2,
              quiet: bool = False) -> list[Trained]:
    """Train every method; with `workers` > 1, in that many single-threaded processes at once
    (small networks barely use a second thread, so two processes on 2 cores train ~2x faster)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from queue import Empty

    from tqdm import tqdm

    from steerflow.train import single_thread_env

    total = len(methods) * -(-toy.steps // toy.updates_per_call) * toy.updates_per_call
    bar = tqdm(total=total, desc="toy: training", unit="upd", disable=quiet, dynamic_ncols=True, smoothing=0)
    if workers <= 1:
        trained = [train_method(*m, toy, data, progress=bar.update) for m in methods]
        bar.close()
        return trained
    saved = dict(os.environ)
    os.environ.update(single_thread_env())  # inherited by the spawned workers only
    try:
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            queue = manager.Queue()
            futures = [pool.submit(_train_in_worker, queue, *m, toy, data) for m in methods]
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
    import jax.numpy as jnp

    z = jax.random.normal(key, (num_latents, SPEC_DIMS["action_dim"]))
    cos, q_pb, q_d = jax.vmap(lambda s: gradient_cosine(s, z))(t.states)
    cos, q_pb, q_d = np.asarray(cos), np.asarray(q_pb), np.asarray(q_d)
    corr = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(q_pb, q_d)]
    rel_rmse = [float(np.sqrt(np.mean((a - b) ** 2)) / (np.std(a) + 1e-12)) for a, b in zip(q_pb, q_d)]
    return {"mean_cosine": float(cos.mean()), "mean_cosine_per_seed": cos.mean(1).round(4).tolist(),
            "fraction_cosine_below_0.5": float((cos < 0.5).mean()),
            "value_correlation_per_seed": np.round(corr, 4).tolist(),
            "value_relative_rmse_per_seed": np.round(rel_rmse, 4).tolist()}


# ----------------------------------------------------------------------------- the study

def methods(toy: ToyConfig) -> list[tuple[str, str, dict]]:
    """(label, agent, overrides), the slowest first so that two workers finish close together."""
    qc_fql = [(f"QC-FQL α={a:g}", "qc-fql", {"alpha": a}) for a in toy.alphas]
    return [("DSRL-NA", "dsrl-na", {"geometry": "normal"}), *qc_fql, ("LPS", "lps", {})]


def run_study(toy: ToyConfig = ToyConfig(), workers: int = 2, quiet: bool = False) -> dict:
    """Train every method, measure the numbers behind both figures; returns them with the states."""
    import jax

    data = make_transitions(toy.data_seed, toy.num_data)
    start = time.perf_counter()
    trained = train_all(methods(toy), toy, data, workers=workers, quiet=quiet)
    key = jax.random.PRNGKey(12345)
    by_label = {t.name: t for t in trained}
    regularised = [t for t in trained if t.agent == "qc-fql"]
    rows = [["BC-FM (QC-FQL's base)"] + [t.name for t in regularised],
            ["BC-MF (LPS's base)"] + [t.name for t in trained if t.agent != "qc-fql"]]
    most_regularised = max(regularised, key=lambda t: t.states.config.alpha)
    actions = {"BC-FM (QC-FQL's base)": base_actions(most_regularised, toy, key),
               "BC-MF (LPS's base)": base_actions(by_label["LPS"], toy, key)}
    actions |= {t.name: sample_actions(t, toy, key) for t in trained}
    stats = {name: action_stats(actions[name], data["actions"], toy.support_radius) for row in rows for name in row}
    reachable = {"LPS": sphere_image(by_label["LPS"])}  # (S, 720, 2)
    stats["LPS"]["best_reachable_reward_per_seed"] = reward(reachable["LPS"]).max(1).round(4).tolist()
    dsrl = next(t for t in trained if t.agent == "dsrl-na")
    latent = latent_study(dsrl, toy, jax.random.PRNGKey(54321))
    best_in_support = float(reward(data["actions"]).max())
    return {"toy": asdict(toy), "data": data, "trained": trained, "actions": actions, "rows": rows, "reachable": reachable,
            "figure2": stats, "figure3": latent,
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
    from steerflow.toy_plots import plot_figure2, plot_figure3

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
