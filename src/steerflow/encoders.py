"""Image observations: the packed observation row, the IMPALA-style CNN encoder and the wrapper
that puts it in front of any network that reads observations.

Packed row. Every agent reads observations as one array `obs (B, obs_dim)`; with camera keys a
row is a uint8 vector
    [frame of key 1 (H·W·C), frame of key 2, ..., low-dim state as float32 bytes (4·D)]
(keys sorted by name, `ObsLayout`), so an agent's batching code (`obs.shape[0]`, `jnp.repeat`,
indexing) works unchanged and frames stay uint8 on the device up to the encoder, which casts and
scales them (x / 255). The low-dim state (already normalised) rides along as its float32 bytes and
is bit-cast back, exactly. `obs_dim` is then `ObsLayout.packed_dim`.

Several cameras are channel-concatenated, (B, H, W, ΣC), into one CNN (they must share H and W);
OGBench stacks frames the same way. The encoder's embedding is concatenated with the state.

Encoder (OGBench's `ImpalaEncoder`, impls/utils/encoders.py, written anew): per stack a 3x3 conv,
a 3x3 max-pool with stride 2, then `blocks` residual blocks (relu, conv, relu, conv, + input);
relu, flatten, a GELU dense layer of `dense` units. `arch`: impala (stacks 16-32-32, 2 blocks),
impala-small (1 block: OGBench's choice for visual-cube), impala-debug (stacks 4-4, 1 block).

Where it sits. `encoded(net, config, spec)` wraps a network (critic ensemble, base field, actor)
so that its params hold their own encoder: one per network, as OGBench's visual agents (a target
critic gets its Polyak copy). `EncoderConfig.share=True` ties them into one encoder: every
network's copy starts equal (`tie`) and each update adds up the copies' gradients and applies the
sum to each (`tie_gradients`), so they stay bit-identical: one set of weights trained by the sum of
every loss that reaches it. (Each network still runs its copy: sharing saves no compute.)
Agents whose Config has an `encoder` field take images; the others refuse them (`check_images`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ARCHS = {"impala": ((16, 32, 32), 2), "impala-small": ((16, 32, 32), 1), "impala-debug": ((4, 4), 1)}
LAYOUT_FILE = "observation_layout.json"  # a run directory's packed-row layout (absent: low-dim only)


@dataclass(frozen=True)
class EncoderConfig:
    arch: str = "impala-small"  # impala | impala-small | impala-debug (stacks and blocks: ARCHS)
    dense: int = 512  # width of the GELU layer after the conv stacks (OGBench: 512)
    layer_norm: bool = False  # LayerNorm after the conv stacks and the dense layer (OGBench's option)
    share: bool = False  # one encoder for every network (tied) instead of one per network


@dataclass(frozen=True)
class ObsLayout:
    """The packed observation row: camera keys with their (H, W, C) frames, then `state_dim` floats."""

    images: tuple[tuple[str, tuple[int, int, int]], ...]
    state_dim: int

    def __post_init__(self):
        sizes = {tuple(shape[:2]) for _, shape in self.images}
        if len(sizes) > 1:
            raise ValueError(f"image keys {[k for k, _ in self.images]} have frame sizes {sorted(sizes)}: the encoder "
                             "channel-concatenates cameras, so they need one height and width")

    @classmethod
    def from_shapes(cls, shapes: dict, state_dim: int) -> "ObsLayout":
        return cls(tuple((k, tuple(int(s) for s in shapes[k])) for k in sorted(shapes)), int(state_dim))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.images]

    @property
    def frame_dim(self) -> int:
        return sum(math.prod(shape) for _, shape in self.images)

    @property
    def packed_dim(self) -> int:
        return self.frame_dim + 4 * self.state_dim

    def flat_frames(self, frames: dict) -> np.ndarray:
        """{key: (N, H, W, C) uint8} -> (N, frame_dim) uint8, keys in layout order."""
        parts = []
        for key, shape in self.images:
            if key not in frames:
                raise ValueError(f"image key {key!r} missing from the observation (it has {sorted(frames)})")
            arr = np.asarray(frames[key])
            if arr.dtype != np.uint8 or arr.shape[1:] != shape:
                raise ValueError(f"image key {key!r}: got {arr.dtype} frames of shape {arr.shape[1:]}, "
                                 f"expected uint8 {shape}")
            parts.append(arr.reshape(len(arr), -1))
        return np.concatenate(parts, 1) if len(parts) > 1 else parts[0]

    def pack(self, flat_frames, state):
        """(B, frame_dim) uint8 frames and (B, state_dim) float32 state -> (B, packed_dim) uint8 rows;
        numpy in, numpy out, jax in, jax out."""
        if isinstance(flat_frames, np.ndarray) and isinstance(state, np.ndarray):
            raw = np.ascontiguousarray(state, "<f4").view(np.uint8).reshape(len(state), 4 * self.state_dim)
            return np.concatenate([flat_frames, raw], 1)
        raw = jax.lax.bitcast_convert_type(jnp.asarray(state, jnp.float32), jnp.uint8)
        return jnp.concatenate([flat_frames, raw.reshape(raw.shape[0], 4 * self.state_dim)], 1)

    def unpack(self, obs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(B, packed_dim) rows -> (images (B, H, W, ΣC) uint8, state (B, state_dim) float32)."""
        if obs.shape[-1] != self.packed_dim:
            raise ValueError(f"observation rows of width {obs.shape[-1]}, the layout packs {self.packed_dim}")
        obs = obs.astype(jnp.uint8)  # `init` traces with float zeros of the packed width
        frames, offset = [], 0
        for _, shape in self.images:
            size = math.prod(shape)
            frames.append(obs[:, offset:offset + size].reshape(obs.shape[0], *shape))
            offset += size
        raw = obs[:, offset:].reshape(obs.shape[0], self.state_dim, 4)
        state = jax.lax.bitcast_convert_type(raw, jnp.float32).reshape(obs.shape[0], self.state_dim)
        return jnp.concatenate(frames, -1) if len(frames) > 1 else frames[0], state

    def to_json(self) -> dict:
        return {"images": {k: list(shape) for k, shape in self.images}, "state_dim": self.state_dim}

    @classmethod
    def from_json(cls, data: dict) -> "ObsLayout":
        return cls.from_shapes(data["images"], data["state_dim"])


def save_layout(directory: Path, layout: ObsLayout | None) -> None:
    path = Path(directory) / LAYOUT_FILE
    if layout is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(layout.to_json(), indent=1) + "\n")
    tmp.replace(path)


def load_layout(directory: Path) -> ObsLayout | None:
    path = Path(directory) / LAYOUT_FILE
    return ObsLayout.from_json(json.loads(path.read_text())) if path.exists() else None


# --------------------------------------------------------------------------- the CNN

class ResidualStack(nn.Module):
    """conv 3x3 -> max-pool 3x3 / 2 -> `blocks` x (relu, conv, relu, conv, + input)."""

    features: int
    blocks: int

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.xavier_uniform()
        x = nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=init)(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for _ in range(self.blocks):
            y = nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=init)(nn.relu(x))
            x = x + nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=init)(nn.relu(y))
        return x


class ImpalaEncoder(nn.Module):
    """(B, H, W, C) uint8 frames -> (B, dense) float32 embedding; the cast and scale happen here."""

    stacks: Sequence[int]
    blocks: int
    dense: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, frames):
        x = frames.astype(jnp.float32) / 255.0
        for width in self.stacks:
            x = ResidualStack(width, self.blocks)(x)
        x = nn.relu(x)
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        x = nn.gelu(nn.Dense(self.dense, kernel_init=nn.initializers.xavier_uniform())(x.reshape(x.shape[0], -1)))
        return nn.LayerNorm()(x) if self.layer_norm else x


class ObsEncoder(nn.Module):
    """Packed rows (B, packed_dim) -> [CNN(frames), state] (B, dense + state_dim)."""

    layout: ObsLayout
    config: EncoderConfig

    @nn.compact
    def __call__(self, obs):
        frames, state = self.layout.unpack(obs)
        stacks, blocks = ARCHS[self.config.arch]
        emb = ImpalaEncoder(stacks, blocks, self.config.dense, self.config.layer_norm)(frames)
        return jnp.concatenate([emb, state], -1)


class Encoded(nn.Module):
    """`net(encoder(obs), *rest)`: any network whose first input is the observation."""

    net: nn.Module
    layout: ObsLayout
    config: EncoderConfig

    @nn.compact
    def __call__(self, obs, *rest, **kwargs):
        return self.net(ObsEncoder(self.layout, self.config, name="encoder")(obs), *rest, **kwargs)


def check_config(config: EncoderConfig) -> None:
    if config.arch not in ARCHS:
        raise ValueError(f"unknown encoder arch {config.arch!r}; choose one of {sorted(ARCHS)}")
    if config.dense < 1:
        raise ValueError(f"encoder.dense={config.dense}: expected a positive width")


def encoded(net, config, spec):
    """`net` behind the observation encoder when `spec` has image keys, else `net` itself."""
    layout = getattr(spec, "obs_layout", None)
    if layout is None:
        return net
    if getattr(config, "encoder", None) is None:
        raise ValueError(f"{type(config).__module__.rsplit('.', 1)[-1]} has no encoder config: it cannot take images")
    check_config(config.encoder)
    return Encoded(net, layout, config.encoder)


def image_agents() -> list[str]:
    """The agents whose Config has an `encoder` field (the ones that take image observations)."""
    from steerflow.agents import AGENTS

    return sorted(name for name, module in AGENTS.items() if hasattr(module.Config(), "encoder"))


def check_images(agent_name: str, config, layout: ObsLayout | None) -> None:
    """Refuse an image dataset for an agent that has no encoder, naming the ones that do."""
    if layout is None:
        return
    if getattr(config, "encoder", None) is None:
        raise ValueError(f"--agent {agent_name} does not take image observations (image keys {layout.keys}); "
                         f"agents with the CNN encoder: {', '.join(image_agents())}")
    check_config(config.encoder)


# --------------------------------------------------------------------------- sharing (tied copies)

def _copies(params: dict) -> list[str]:
    """Names of the networks in `params` that hold an encoder copy (sorted)."""
    return sorted(name for name, p in params.items()
                  if isinstance(p, dict) and isinstance(p.get("params"), dict) and "encoder" in p["params"])


def _with_encoder(tree: dict, names: list[str], value) -> dict:
    out = dict(tree)
    for name in names:
        if name in out:
            out[name] = {**out[name], "params": {**out[name]["params"], "encoder": value}}
    return out


def sharing(config, spec) -> bool:
    enc = getattr(config, "encoder", None)
    return getattr(spec, "obs_layout", None) is not None and enc is not None and enc.share


def tie(params: dict, target_params: dict) -> tuple[dict, dict]:
    """Every encoder copy (and its target copies) set to the first network's initial encoder."""
    names = _copies(params)
    if not names:
        return params, target_params
    first = params[names[0]]["params"]["encoder"]
    return _with_encoder(params, names, first), _with_encoder(target_params, names, first)


def tie_gradients(grads: dict) -> dict:
    """Each copy's gradient replaced by the sum over copies: the gradient of the one shared encoder."""
    names = _copies(grads)
    if len(names) < 2:
        return grads
    total = jax.tree.map(lambda *g: sum(g), *[grads[n]["params"]["encoder"] for n in names])
    return _with_encoder(grads, names, total)

