"""`steerflow export RUN_DIR --format onnx|stablehlo --out DIR`: a self-contained policy artifact.

DIR holds
    policy.onnx | policy.stablehlo   the acting function, parameters and normalisers baked in:
                                     obs (B, obs_dim) float32 [, noise (B, *noise_shape) float32]
                                     -> chunks (B, H·A) float32 in env units; B is symbolic
    artifact.json                    format, agent, task, step, obs/action spec, horizon, the noise
                                     spec (None: deterministic), normalisation, the run's config.json
                                     and its dataset fingerprint (run_info.json "dataset")

`steerflow.policy.load(DIR)` acts with it, needing onnxruntime (ONNX) or jax (StableHLO) only.
ONNX goes through jax2onnx (jaxpr -> ONNX, no TensorFlow in between); StableHLO through
`jax.export` (serialize/deserialize, versioned by JAX's compatibility guarantees).
The artifact is written to a temporary directory of its own beside DIR (`.tmp-DIR-PID.*`) and
renamed into place; one export writes DIR at a time (`steerflow.runlock`), and a second is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from steerflow import runlock
from steerflow.errors import naming

FORMATS = ("onnx", "stablehlo")
FILES = {"onnx": "policy.onnx", "stablehlo": "policy.stablehlo"}


def _traced_inputs(meta: dict, batch):
    import jax
    import jax.numpy as jnp

    inputs = [jax.ShapeDtypeStruct((batch, meta["obs_dim"]), jnp.float32)]
    if meta["noise"] is not None:
        inputs.append(jax.ShapeDtypeStruct((batch, *meta["noise"]["shape"]), jnp.float32))
    return inputs


def serialize(function, meta: dict, fmt: str) -> bytes:
    """The bytes of `function` (obs[, noise]) -> chunks in `fmt`, batch dimension symbolic."""
    import jax

    if fmt == "stablehlo":
        from jax import export

        (batch,) = export.symbolic_shape("B")
        exported = export.export(jax.jit(function), platforms=["cpu"])(*_traced_inputs(meta, batch))
        return bytes(exported.serialize())
    if fmt == "onnx":
        to_onnx = _jax2onnx()
        names = ["obs"] + (["noise"] if meta["noise"] is not None else [])
        shapes = [tuple("B" if i == 0 else d for i, d in enumerate(s.shape)) for s in _traced_inputs(meta, 1)]
        model = to_onnx(function, shapes, input_names=names, output_names=["chunks"],
                        model_name=f"steerflow_{meta['agent']}")
        return model.SerializeToString()
    raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")


def _jax2onnx():
    """jax2onnx's `to_onnx` with only its plugins for JAX primitives registered. Its default
    discovery imports every plugin and example module (Equinox, NNX, MaxText demos...), which
    compiles ~70 JAX programs: 63 s on the first conversion here, against ~9 s for the `jax` tree.
    Its Flax plugins are needed: they carry the symbolic batch dimension through `nn.Dense`."""
    try:
        from jax2onnx import to_onnx
        from jax2onnx.plugins import plugin_system
    except ImportError:
        raise ValueError("--format onnx needs jax2onnx and onnxruntime: pip install 'steerflow[export]'") from None
    if not plugin_system._already_imported_plugins:
        for tree in ("jax", "flax"):
            plugin_system._import_tree(Path(plugin_system.__file__).parent / tree, f"jax2onnx.plugins.{tree}")
        plugin_system._already_imported_plugins = True
    return to_onnx


# Graphs jax2onnx 0.17.1 cannot convert with a symbolic batch dimension (measured; StableHLO takes them).
ONNX_UNSUPPORTED = {
    "qc-bon": "its critic ensemble is a vmapped nn.Dense, and jax2onnx's linen.dense plugin has no batching rule",
}


def check_exportable(agent_name: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and agent_name in ONNX_UNSUPPORTED:
        raise ValueError(f"--format onnx: agent {agent_name!r} does not convert to ONNX "
                         f"({ONNX_UNSUPPORTED[agent_name]}); export it with --format stablehlo")


def export_policy(function, meta: dict, fmt: str, out: Path) -> Path:
    """Write the artifact of an acting function and its metadata (module docstring) to `out`."""
    check_exportable(meta["agent"], fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with runlock.hold(runlock.sibling_lock(out), f"export target {out}", hint="choose another --out"):
        if out.exists() and not (out / "artifact.json").exists() and any(out.iterdir()):
            raise FileExistsError(f"--out {out}: exists and is not an artifact directory; choose another --out")
        runlock.remove_stale(out.parent, out.name)
        _write_artifact(function, meta, fmt, out)
    return out


def _write_artifact(function, meta: dict, fmt: str, out: Path) -> None:
    """Serialize into a temporary directory of this process's, then rename it to `out`."""
    import jax

    from steerflow import __version__

    payload = serialize(function, meta, fmt)
    record = {"format": fmt, "file": FILES[fmt], "steerflow": __version__, "jax": jax.__version__,
              "inputs": ["obs"] + (["noise"] if meta["noise"] is not None else []),
              "output": "chunks (B, horizon * action_dim), env units", **meta}
    with runlock.scratch(out.parent, out.name) as tmp:  # removed on failure: nothing partial is left
        with naming(out / FILES[fmt]):  # a full disk names the file, not just `[Errno 28]`
            (tmp / FILES[fmt]).write_bytes(payload)
        with naming(out / "artifact.json"):
            (tmp / "artifact.json").write_text(json.dumps(record, indent=1) + "\n")
        runlock.replace_dir(tmp, out)


def export_run(run_dir: Path, fmt: str, out: Path, seed_index: int = 0) -> Path:
    """Export a run directory's last checkpoint (one seed of it) as an artifact."""
    from steerflow.policy import acting_function, load_run_state, run_directory

    run_dir = run_directory(run_dir)
    if not (run_dir / "checkpoints" / "latest.msgpack").exists():
        raise FileNotFoundError(f"{run_dir}/checkpoints/latest.msgpack missing: the run has no finished "
                                "checkpoint to export yet (train it, or wait for its first checkpoint)")
    check_exportable(json.loads((run_dir / "config.json").read_text())["run"]["agent"], fmt)
    agent, state, norm, meta = load_run_state(run_dir, seed_index)
    if meta.get("obs_layout"):  # the artifact's input is an obs_dim float32 row; packed uint8 frames are not
        raise ValueError(f"{run_dir}: trained on camera frames {list(meta['obs_layout']['images'])}; exporting image "
                         "policies is not supported yet: load the run directory with steerflow.policy.load instead")
    return export_policy(acting_function(agent, state, norm), meta, fmt, out)
