"""A trained policy outside the training loop: `steerflow.policy.load(PATH)`.

PATH is a run directory (`config.json` + `checkpoints/latest.msgpack`, written by `steerflow
train`; a parent of `seed_k/` runs picks its first seed) or an artifact directory written by
`steerflow export` (`artifact.json` + `policy.onnx` or `policy.stablehlo`). Either way

    policy.act(obs)        obs (obs_dim,) -> chunk (H, A);  obs (B, obs_dim) -> chunks (B, H, A)
    policy.stepper()       .reset(); .step(obs) -> one action (A,), one network query per chunk;
                           .step(obs (B, obs_dim)) -> actions (B, A) of B envs in lockstep

numpy in, numpy out, in the environment's units: observations are normalised and actions
de-normalised with the run's `normalization.json` (identity when it has none, as OGBench runs).
A run trained on camera keys (`observation_layout.json`) takes raw frames: obs is a dict
{key: (H, W, C) or (B, H, W, C) uint8, "state": (D,) or (B, D) low-dim state (none when D = 0)}.
Time convention: chunk row h is the action at t + h, executed open loop.

Noise. A stochastic agent's act draws one prior sample per row (`agent.noise_spec`: per-row shape
and geometry); here that draw is made in numpy from `load(..., seed=S)` (or passed as `noise=`),
so the in-process JAX policy and its exported artifacts give equal actions for equal seeds.
Deterministic agents (LPS, deterministic DSRL-NA) take no noise.

Loading an artifact imports neither the training code nor flax/optax: onnxruntime for ONNX,
`jax.export` for StableHLO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ARTIFACT_FILE = "artifact.json"
SPHERE_EPS = 1e-6  # generative.latent.project_to_sphere's eps


def sample_noise(rng: np.random.Generator, batch: int, noise: dict) -> np.ndarray:
    """`batch` prior draws of a noise spec {"shape", "geometry", "bound"}: (batch, *shape) float32.
    A numpy mirror of `generative.latent.sample_prior` (an artifact's host has no steerflow JAX code)."""
    shape = (batch, *noise["shape"])
    if noise["geometry"] == "truncated":  # rejection sampling of N(0, 1) on [-bound, bound]
        out = rng.standard_normal(shape)
        bad = np.abs(out) > noise["bound"]
        while bad.any():
            out[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(out) > noise["bound"]
        return out.astype(np.float32)
    eps = rng.standard_normal(shape).astype(np.float32)
    if noise["geometry"] == "sphere":
        d = shape[-1]
        eps = np.sqrt(d) * eps / np.sqrt(np.sum(eps**2, -1, keepdims=True) + SPHERE_EPS)
    return eps.astype(np.float32)


class Policy:
    """obs -> action chunks; subclasses provide `_chunks(obs (B, obs_dim), noise) -> (B, H·A)`."""

    def __init__(self, meta: dict, seed: int = 0):
        self.meta = meta  # agent, task, obs_dim, action_dim, horizon, noise, ...
        self.obs_dim, self.action_dim, self.horizon = meta["obs_dim"], meta["action_dim"], meta["horizon"]
        self.noise = meta["noise"]  # None: deterministic
        self.rng = np.random.default_rng(seed)

    @property
    def deterministic(self) -> bool:
        return self.noise is None

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def sample_noise(self, batch: int) -> np.ndarray | None:
        return None if self.noise is None else sample_noise(self.rng, batch, self.noise)

    def _image_rows(self, obs) -> tuple[np.ndarray, bool]:
        """(packed uint8 rows, single) of a raw image observation dict (module docstring)."""
        from steerflow.data.normalization import Normalization
        from steerflow.data.source import pack_observations
        from steerflow.encoders import ObsLayout

        layout = ObsLayout.from_json(self.meta["obs_layout"])
        if not isinstance(obs, dict) or not obs or layout.keys[0] not in obs:
            raise ValueError(f"{self.meta['agent']} on {self.meta['task']} acts on camera frames: pass a dict "
                             f"{{{', '.join(repr(k) for k in layout.keys)}: (H, W, C) uint8 frames"
                             f"{', state: (D,)' if layout.state_dim else ''}}} (or a batch of each)")
        single = np.ndim(obs[layout.keys[0]]) == 3
        batch = {k: (np.asarray(v)[None] if single else np.asarray(v)) for k, v in obs.items()}
        norm = Normalization.from_json(self.meta["normalization"])
        return pack_observations(batch, norm, layout), single

    def act(self, obs, noise=None) -> np.ndarray:
        """Action chunks (B, H, A) for observations (B, obs_dim), or (H, A) for one (obs_dim,)."""
        if self.meta.get("obs_layout"):
            batch, single = self._image_rows(obs)
        else:
            obs = np.asarray(obs, np.float32)
            single = obs.ndim == 1
            batch = obs[None] if single else obs
        if batch.ndim != 2 or batch.shape[1] != self.obs_dim:
            raise ValueError(f"observation shape {obs.shape}: expected ({self.obs_dim},) or (B, {self.obs_dim}) "
                             f"for {self.meta['agent']} on {self.meta['task']}")
        if self.noise is None:
            if noise is not None:
                raise ValueError(f"{self.meta['agent']} acts deterministically: it takes no noise")
        else:
            noise = self.sample_noise(len(batch)) if noise is None else np.asarray(noise, np.float32)
            want = (len(batch), *self.noise["shape"])
            if single and noise.shape == want[1:]:
                noise = noise[None]
            if noise.shape != want:
                raise ValueError(f"noise shape {noise.shape}: expected {want}")
        chunks = np.asarray(self._chunks(batch, noise), np.float32).reshape(len(batch), self.horizon,
                                                                           self.action_dim)
        return chunks[0] if single else chunks

    def _chunks(self, obs: np.ndarray, noise):
        raise NotImplementedError

    def stepper(self) -> "ChunkStepper":
        return ChunkStepper(self)


class ChunkStepper:
    """Open-loop chunk execution on a control loop: `step(obs)` returns the next action of the
    current chunk and queries the policy only when the chunk is used up (every H steps).

    One observation (obs_dim,) gives one action (A,). A batch (B, obs_dim) of B environments
    stepped in lockstep gives (B, A), row b for environment b, with one query for the whole batch
    every H steps. The chunks of a batch start together: when one environment starts a new episode,
    `reset()` (the next step re-queries every environment). A batch of another size before the chunk
    is used up is refused (call `reset()` first)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.queries = 0
        self.reset()

    def reset(self) -> None:
        self._chunk, self._index, self._batch = None, 0, None

    @staticmethod
    def batch_size(obs) -> int | None:
        """B of a batch of observations, None for one observation (image runs: a dict of frames)."""
        if isinstance(obs, dict):
            frames = next((np.asarray(v) for k, v in obs.items() if k != "state"), None)
            return None if frames is None or frames.ndim == 3 else len(frames)
        obs = np.asarray(obs)
        return None if obs.ndim == 1 else len(obs)

    def step(self, obs) -> np.ndarray:
        """The next action (A,) of one observation, or actions (B, A) of a batch of B."""
        batch = self.batch_size(obs)
        if self._chunk is not None and self._index < self.policy.horizon and batch != self._batch:
            raise ValueError(f"stepper: got {'one observation' if batch is None else f'a batch of {batch}'} "
                             f"in the middle of a chunk for {'one' if self._batch is None else self._batch}; "
                             "call reset() when the number of environments changes")
        if self._chunk is None or self._index == self.policy.horizon:
            self._chunk, self._index, self._batch = self.policy.act(obs), 0, batch
            self.queries += 1
        action = self._chunk[self._index] if batch is None else self._chunk[:, self._index]
        self._index += 1
        return action


# --------------------------------------------------------------------------- run directories

def run_directory(path: Path) -> Path:
    """The run directory holding config.json: PATH itself or its first `seed_k/` child."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    children = sorted(path.glob("seed_*/config.json"))
    if not children:
        raise FileNotFoundError(f"{path}: not a run directory or artifact (no config.json, {ARTIFACT_FILE} "
                                "or seed_*/config.json in it)")
    return children[0].parent


def load_run_state(path: Path, seed_index: int = 0):
    """(agent module, one seed's AgentState, run metadata) of a run directory's last checkpoint."""
    import jax

    from steerflow.train import restore_run

    run_dir = run_directory(path)
    stored = json.loads((run_dir / "config.json").read_text())
    seeds = stored["run"]["seeds"]
    if not 0 <= seed_index < len(seeds):
        raise ValueError(f"seed_index {seed_index}: {run_dir} holds {len(seeds)} seed(s) {seeds}")
    run, agent, config, tc, spec, states, step, norm = restore_run(run_dir)
    state = jax.tree.map(lambda x: x[seed_index], states)
    info_path = run_dir / "run_info.json"
    dataset = json.loads(info_path.read_text()).get("dataset") if info_path.exists() else None
    meta = {"agent": run.agent, "task": run.task, "seed": run.seeds[seed_index], "step": step,
            "obs_dim": spec.obs_dim, "action_dim": spec.action_dim, "horizon": spec.horizon,
            "noise": noise_spec(agent, config, spec), "normalization": norm.to_json(),
            "obs_layout": spec.obs_layout.to_json() if spec.obs_layout is not None else None,
            "config": stored, "dataset": dataset, "run_dir": str(run_dir)}
    return agent, state, norm, meta


def noise_spec(agent, config, spec) -> dict | None:
    """The JSON noise spec of an agent ({"shape", "geometry", "bound"}), None when deterministic."""
    from steerflow.generative.latent import TRUNCATION

    from steerflow.agents.common import ExplicitNoiseAgent

    if not isinstance(agent, ExplicitNoiseAgent):
        raise ValueError(f"agent {agent.__name__.rsplit('.', 1)[-1]} has no explicit-noise act (act_noise): its "
                         "sampler draws fresh noise inside every step, so it cannot be loaded as a policy here")
    found = agent.noise_spec(config, spec)
    if found is None:
        return None
    shape, geometry = found
    return {"shape": list(shape), "geometry": geometry, "bound": TRUNCATION}


def acting_function(agent, state, norm):
    """Pure JAX (obs (B, obs_dim) env units, noise or None) -> chunks (B, H·A) env units: the
    normalisers around the agent's clipped act. Shared by the in-process policy and `export`.
    Image runs take packed rows whose state is normalised already (`Policy._image_rows`)."""
    images = state.spec.obs_layout is not None

    def act(obs, noise=None):
        chunks = agent.act_noise(state, obs if images else norm.normalize_obs(obs), noise)
        return norm.denormalize_action(chunks)

    return act


class JaxPolicy(Policy):
    """The in-process JAX policy of an agent state (needs the training stack); `meta` as
    `load_run_state` returns it."""

    def __init__(self, agent, state, norm, meta: dict, seed: int = 0):
        import jax

        self.agent, self.state, self.norm = agent, state, norm
        super().__init__(meta, seed)
        self.function = acting_function(agent, state, norm)
        self._jitted = jax.jit(self.function)

    def _chunks(self, obs, noise):
        return self._jitted(obs) if noise is None else self._jitted(obs, noise)


# --------------------------------------------------------------------------- artifacts

class ArtifactPolicy(Policy):
    """An exported artifact: ONNX under onnxruntime or StableHLO under `jax.export`; normalisers
    are inside the graph. `threads` sets onnxruntime's intra-op threads (None: its default)."""

    def __init__(self, path: Path, seed: int = 0, threads: int | None = None):
        path = Path(path)
        meta = json.loads((path / ARTIFACT_FILE).read_text())
        super().__init__(meta, seed)
        self.format = meta["format"]
        file = path / meta["file"]
        if self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # not the unused-initializer warnings of every converted scan
            if threads is not None:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            self._inputs = [i.name for i in self.session.get_inputs()]
        elif self.format == "stablehlo":
            import jax
            from jax import export

            self.exported = export.deserialize(bytearray(file.read_bytes()))
            self._call = jax.jit(self.exported.call)  # unjitted, `call` re-lowers each time (~3.5 ms)
        else:
            raise ValueError(f"{path / ARTIFACT_FILE}: unknown format {self.format!r} (onnx or stablehlo)")

    def _chunks(self, obs, noise):
        args = [obs] if noise is None else [obs, noise]
        if self.format == "onnx":
            return self.session.run(None, dict(zip(self._inputs, args)))[0]
        return self._call(*args)


def load(path, seed: int = 0, seed_index: int = 0, threads: int | None = None) -> Policy:
    """The policy of a run directory or an exported artifact directory (module docstring).
    `seed` seeds a stochastic policy's noise; `seed_index` picks one of a run's vmapped seeds."""
    path = Path(path)
    if (path / ARTIFACT_FILE).exists():
        return ArtifactPolicy(path, seed, threads)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run or artifact directory")
    return JaxPolicy(*load_run_state(path, seed_index), seed=seed)
