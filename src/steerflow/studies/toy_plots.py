"""Figures of the 2-D toy study (`studies.toy`): Figure-2 and Figure-3 analogues of the LPS paper.

Both figures draw in the action square [-1, 1]² (Figure 2) or in a window of DSRL's 2-D latent
plane (Figure 3); seed 0's networks are drawn, the titles carry the all-seed numbers. Drawing only:
every number comes in the study's result (`studies.toy.run_study`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steerflow.studies.toy_task import reward

GRID = 121  # points per axis of the reward background


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=64, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)
    return path


def _reward_background(ax):
    xs = np.linspace(-1, 1, GRID)
    grid = np.stack(np.meshgrid(xs, xs), -1)
    ax.imshow(reward(grid), origin="lower", extent=(-1, 1, -1, 1), cmap="Greens", vmin=0, vmax=1, alpha=0.6)


def plot_figure2(result: dict, path: Path) -> Path:
    """One panel per method, one row per family (behaviour-regularised, latent-steered, then QPILOTS-U
    and QPILOTS-M across α from their base at α = 0): reward
    (green), data (grey), the method's actions (colour per seed; stars for deterministic policies)
    and, for LPS, the base's image of the latent sphere (thin lines): every action it can choose."""
    plt = _plt()
    data, toy, rows = result["data"]["actions"], result["toy"], result["rows"]
    cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.5 * cols, 2.8 * len(rows)), squeeze=False)
    colours = plt.cm.tab10(np.arange(len(toy["seeds"])))
    for ax in axes.flat[:]:
        ax.axis("off")
    for ax, name in ((axes[i, j], name) for i, row in enumerate(rows) for j, name in enumerate(row)):
        ax.axis("on")
        _reward_background(ax)
        ax.scatter(data[:, 0], data[:, 1], s=1, c="0.55", alpha=0.35, linewidths=0)
        for curve, colour in zip(result["reachable"].get(name, []), colours):  # LPS: decoded sphere
            ax.plot(*np.append(curve, curve[:1], 0).T, color=colour, lw=0.6, alpha=0.6)
        for seed_actions, colour in zip(result["actions"][name], colours):
            unique = np.unique(seed_actions.round(4), axis=0)
            ax.scatter(unique[:, 0], unique[:, 1], s=30 if len(unique) < 4 else 4, color=colour,
                       marker="*" if len(unique) < 4 else "o", alpha=0.9 if len(unique) < 4 else 0.5,
                       edgecolors="k" if len(unique) < 4 else "none", linewidths=0.4)
        s = result["figure2"][name]
        ax.set_title(f"{name}\nr={s['mean_reward']:.3f}  out={s['outside_support']:.0%}", fontsize=9)
        ax.set_xlim(-1.05, 1.05), ax.set_ylim(-1.05, 1.05), ax.set_aspect("equal")
        ax.set_xticks([-1, 0, 1]), ax.set_yticks([-1, 0, 1])
    fig.suptitle("Where the learned actions land (grey: data, green: reward, colour: seeds; "
                 "r = mean reward, out = share of actions off the data)", fontsize=10)
    return _save(fig, path)


def plot_figure3(result: dict, path: Path) -> Path:
    """Data with reward; Q(s, D(z)) and Q_ψ(s, z) over DSRL's latent plane; their gradient cosine."""
    plt = _plt()
    maps = result["latent_maps"]
    cos, q_pb, q_d, window = maps["cosine"], maps["pulled_back"], maps["distilled"], maps["window"]
    data = result["data"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
    sc = axes[0].scatter(data["actions"][:, 0], data["actions"][:, 1], c=data["rewards"], s=2, cmap="viridis")
    axes[0].set_title("(1) data, coloured by reward", fontsize=9)
    axes[0].set_xlim(-1, 1), axes[0].set_ylim(-1, 1)
    fig.colorbar(sc, ax=axes[0], fraction=0.046)
    extent = (-window, window, -window, window)
    vmin, vmax = min(q_pb.min(), q_d.min()), max(q_pb.max(), q_d.max())
    for ax, values, title in ((axes[1], q_pb, "(2) action critic pulled back: Q(s, D(z))"),
                              (axes[2], q_d, "(3) DSRL's distilled latent critic Q_ψ(s, z)")):
        im = ax.imshow(values, origin="lower", extent=extent, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    im = axes[3].imshow(cos, origin="lower", extent=extent, cmap="RdBu", vmin=-1, vmax=1)
    f3 = result["figure3"]
    axes[3].set_title(f"(4) cos(∇z (2), ∇z (3)); mean on z~N(0,I)\nover seeds: {f3['mean_cosine']:.2f}", fontsize=9)
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    for ax in axes[1:]:
        ax.add_patch(plt.Circle((0, 0), 2.0, fill=False, ls="--", color="w", lw=0.8))  # ~86% of N(0, I)
        ax.set_xlabel("z₁"), ax.set_ylabel("z₂")
    axes[0].set_xlabel("a₁"), axes[0].set_ylabel("a₂")
    fig.tight_layout()
    return _save(fig, path)
