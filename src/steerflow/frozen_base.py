"""Steering a frozen base: `steerflow train --agent qpilots-u|qpilots-m --base-from RUN_DIR`.

The flow-matching base of a finished run (BC-FM, QC-FQL, QC-BoN, a QPILOTS run, ... any agent
whose base decodes by Euler steps) is copied into the new run's states and never trained again
(`train_base=False`): only the critic (and QPILOTS-M's meta flow map) learn. The new run adopts
the base run's flow-network config, so the parameters fit by construction; everything else (task,
preset, critic) is the new run's own. Seed k of the new run steers seed k of the base run, or the
base run's only seed when it has one.

RUN_DIR is a run directory (`config.json`, `checkpoints/latest.msgpack`, seeds vmapped) or the
parent of `seed_k/` run directories (`--parallel processes`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FM_DECODERS = ("fm-bptt", "fm-1step")


def _seed_dirs(base_dir: Path) -> dict[int, tuple[Path, int]]:
    """{seed: (run directory, index of that seed in its checkpoint)} of a base run."""
    base_dir = Path(base_dir)
    if (base_dir / "config.json").exists():
        seeds = json.loads((base_dir / "config.json").read_text())["run"]["seeds"]
        return {s: (base_dir, i) for i, s in enumerate(seeds)}
    children = sorted(base_dir.glob("seed_*/config.json"))
    if not children:
        raise FileNotFoundError(f"--base-from {base_dir}: not a run directory (no config.json in it or in seed_*/)")
    return {json.loads(c.read_text())["run"]["seeds"][0]: (c.parent, 0) for c in children}


def overrides_for(base_dir: Path, agent, user_overrides: dict, seeds: list[int]) -> dict:
    """The agent-config overrides of a run steering `base_dir`'s frozen base: the user's own,
    then `train_base=false` and the base's flow-network fields. Checks everything that can be
    checked without loading data: the agent can take a frozen base, the base run is an FM run
    with a checkpoint for each of `seeds`, and the user does not also size the flow net."""
    from steerflow.agents import AGENTS

    name = next((k for k, v in AGENTS.items() if v is agent), getattr(agent, "__name__", agent))
    if not hasattr(agent.Config(), "train_base"):
        raise ValueError(f"--base-from: agent {name!r} trains its own base; use qpilots-u or qpilots-m")
    clash = sorted(k for k in user_overrides if k == "flow" or k.startswith("flow.") or k == "train_base")
    if clash:
        raise ValueError(f"--base-from: {', '.join(clash)} come(s) from the base run; drop the --set")
    dirs = _seed_dirs(base_dir)
    _check_seeds(dirs, base_dir, seeds)
    run_dir = next(iter(dirs.values()))[0]
    stored = json.loads((run_dir / "config.json").read_text())
    agent_config = stored["agent_config"]
    decoder = agent_config.get("decoder", "fm-bptt")  # QPILOTS runs have no decoder field: FM
    if "flow" not in agent_config or decoder not in FM_DECODERS:
        raise ValueError(f"--base-from {base_dir}: agent {stored['run']['agent']!r} with decoder {decoder!r} "
                         f"has no flow-matching base (decoders {FM_DECODERS})")
    for d, _ in dirs.values():
        if not (d / "checkpoints" / "latest.msgpack").exists():
            raise FileNotFoundError(f"--base-from: {d}/checkpoints/latest.msgpack missing (the run has not "
                                    "checkpointed yet)")
    return {**user_overrides, "train_base": "false", **dict(_flat_overrides("flow.", agent_config["flow"]))}


def _flat_overrides(prefix: str, config: dict):
    """(KEY, VALUE) `--set` pairs of a stored config, nested ones (`flow.dit.width`) included."""
    for k, v in config.items():
        if isinstance(v, dict):
            yield from _flat_overrides(f"{prefix}{k}.", v)
        else:
            yield f"{prefix}{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)


def load_into(states, base_dir: Path, seeds: list[int], obs_dim: int, chunk_dim: int):
    """`states` (seeds vmapped) with `params["base"]` replaced by the base run's, seed by seed."""
    import jax
    from flax import serialization

    dirs = _seed_dirs(base_dir)
    _check_seeds(dirs, base_dir, seeds)
    per_seed, tasks = [], set()
    for s in seeds:
        run_dir, index = dirs[s] if s in dirs else next(iter(dirs.values()))
        raw = serialization.msgpack_restore((run_dir / "checkpoints" / "latest.msgpack").read_bytes())
        tasks.add(json.loads((run_dir / "config.json").read_text())["run"]["task"])
        per_seed.append(jax.tree.map(lambda a: np.asarray(a)[index], raw["states"]["params"]["base"]))
    template = states.params["base"]
    base = serialization.from_state_dict(template, jax.tree.map(lambda *a: np.stack(a), *per_seed))
    want, got = jax.tree.map(np.shape, template), jax.tree.map(np.shape, base)
    if want != got:  # another task's observation or chunk size
        raise ValueError(f"--base-from {base_dir}: the base (task {', '.join(sorted(tasks))}) has parameter "
                         f"shapes {got}, this run needs {want} (observation size {obs_dim}, chunk size {chunk_dim})")
    return states.replace(params={**states.params, "base": jax.tree.map(jax.numpy.asarray, base)})


def _check_seeds(dirs: dict, base_dir: Path, seeds: list[int]) -> None:
    if not all(s in dirs for s in seeds) and len(dirs) != 1:
        raise ValueError(f"--base-from {base_dir}: holds seeds {sorted(dirs)}; the new run's seeds {seeds} "
                         "must be among them (or the base run must have exactly one seed)")
