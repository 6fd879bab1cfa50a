"""Deployable policies: the README's Python snippet, `steerflow.policy.load` on run
directories and artifacts, `steerflow export`, and parity of every exportable agent's ONNX and
StableHLO artifacts with the in-process JAX policy (tiny agents built in-process, a non-identity
normalisation baked in). Parity tolerance: 1e-5 absolute on actions in env units (float32 graphs;
measured at most 7e-7)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from steerflow import cli, export, policy
from steerflow.agents import AGENTS
from steerflow.agents.common import EnvSpec
from steerflow.data import normalization
from steerflow.data.normalization import Normalization
from steerflow.generative import latent

README = Path(__file__).resolve().parents[1] / "README.md"
SPEC = EnvSpec(obs_dim=6, action_dim=2, horizon=3)
NORM = Normalization((0.5, -1.0, 0.0, 2.0, 0.0, 1.0), (2.0, 0.5, 1.0, 3.0, 1.0, 0.25), (-2.0, 0.0), (2.0, 1.0))
TOL = 1e-5
EXPORTABLE = ["lps", "lpsd", "bc-mf", "bc-fm", "qc-fql", "qc-mfql", "dsrl-na", "dsrl-na-sac", "cfgrl", "qc-bon"]
# the training stack a loaded artifact must not need (steerflow.api, imported by the package, imports lazily)
BLOCKED = ["steerflow.train", "steerflow.agents", "steerflow.generative", "steerflow.critic", "steerflow.nets",
           "steerflow.data", "steerflow.envs.pool", "steerflow.export", "flax", "optax", "ogbench",
           "mujoco"]


def _tiny(name):
    from test_agents import _config

    module = AGENTS[name]
    config = _config(module, **({"num_samples": 4} if name == "qc-bon" else {}))
    return module, config, module.init(jax.random.PRNGKey(0), SPEC, config)


def _meta(name, module, config):
    return {"agent": name, "task": "tiny", "obs_dim": SPEC.obs_dim, "action_dim": SPEC.action_dim,
            "horizon": SPEC.horizon, "noise": policy.noise_spec(module, config, SPEC), "normalization": NORM.to_json()}


OBS = np.random.default_rng(0).normal(size=(5, SPEC.obs_dim)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORTABLE)
def test_every_fixed_evaluation_agent_exports_and_matches_jax(name, tmp_path):
    module, config, state = _tiny(name)
    meta = _meta(name, module, config)
    function = policy.acting_function(module, state, NORM)
    noise = None if meta["noise"] is None else policy.sample_noise(np.random.default_rng(1), len(OBS), meta["noise"])
    args = (OBS,) if noise is None else (OBS, noise)
    reference = np.asarray(jax.jit(function)(*args)).reshape(len(OBS), SPEC.horizon, SPEC.action_dim)
    # the explicit-noise act is the agent's own act on the noise its key draws
    key = jax.random.PRNGKey(7)
    normed = NORM.normalize_obs(OBS)
    own = np.asarray(module.act(state, normed, key))
    if meta["noise"] is not None:
        shape, geometry = module.noise_spec(config, SPEC)
        drawn = latent.sample_prior(key, (len(OBS) * int(np.prod(shape[:-1])), shape[-1]), geometry)
        if name == "dsrl-na-sac":  # the gaussian actor's eps, drawn as in actor_latents
            drawn = jax.random.normal(key, (len(OBS), SPEC.chunk_dim))
        np.testing.assert_array_equal(np.asarray(module.act_noise(state, normed, drawn.reshape(len(OBS), *shape))), own)
    else:
        np.testing.assert_array_equal(np.asarray(module.act_noise(state, normed)), own)
    for fmt in export.FORMATS:
        if fmt == "onnx" and name in export.ONNX_UNSUPPORTED:
            with pytest.raises(ValueError, match=f"agent '{name}' does not convert to ONNX.*--format stablehlo"):
                export.export_policy(function, meta, fmt, tmp_path / fmt)
            continue
        loaded = policy.load(export.export_policy(function, meta, fmt, tmp_path / fmt))
        got = loaded.act(OBS, noise)
        assert got.shape == (len(OBS), SPEC.horizon, SPEC.action_dim)
        np.testing.assert_allclose(got, reference, atol=TOL, rtol=0, err_msg=f"{name} {fmt}")
        # one observation in, one chunk out; the seeded noise path gives the same for equal seeds
        assert loaded.act(OBS[0], None if noise is None else noise[0]).shape == (SPEC.horizon, SPEC.action_dim)
        if noise is not None:
            loaded.seed(3)
            a = loaded.act(OBS)
            loaded.seed(3)
            np.testing.assert_array_equal(loaded.act(OBS), a)
            assert not np.allclose(loaded.act(OBS), a)  # fresh noise on the next call


def test_qpilots_is_refused_with_the_reason():
    for name in ("qpilots-u", "qpilots-m"):
        module = AGENTS[name]
        with pytest.raises(ValueError, match="draws fresh noise inside every step"):
            policy.noise_spec(module, module.Config(), SPEC)


def _blocked_loader_script(artifacts: dict, block_jax: bool) -> str:
    blocked = BLOCKED + (["jax", "jaxlib"] if block_jax else [])
    return f"""
import importlib.abc, json, sys
import numpy as np
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked import of {{name}}")
sys.meta_path.insert(0, Block())
from steerflow import policy
obs = np.asarray({OBS.tolist()!r}, np.float32)
out = {{}}
for key, path in {artifacts!r}.items():
    p = policy.load(path)
    noise = None if p.noise is None else np.load(path + "/noise.npy")
    out[key] = p.act(obs, noise).tolist()
    stepper = p.stepper()
    actions = [stepper.step(obs[0]) for _ in range(2 * p.horizon + 1)]
    out[key + ":queries"] = stepper.queries
print("RESULT" + json.dumps(out))
print("LOADED", sorted(m for m in sys.modules if m.startswith("steerflow") or m in ("flax", "optax", "jax")))
"""


@pytest.mark.slow
def test_a_loaded_artifact_needs_none_of_the_training_code(tmp_path):
    expected, onnx_dirs, hlo_dirs = {}, {}, {}
    for name in ("lps", "bc-fm"):
        module, config, state = _tiny(name)
        meta = _meta(name, module, config)
        function = policy.acting_function(module, state, NORM)
        noise = None if meta["noise"] is None else policy.sample_noise(np.random.default_rng(2), len(OBS), meta["noise"])
        expected[name] = np.asarray(jax.jit(function)(*((OBS,) if noise is None else (OBS, noise))))
        for fmt, dirs in (("onnx", onnx_dirs), ("stablehlo", hlo_dirs)):
            out = export.export_policy(function, meta, fmt, tmp_path / f"{name}-{fmt}")
            if noise is not None:
                np.save(out / "noise.npy", noise)
            dirs[f"{name}-{fmt}"] = str(out)
    env = {**os.environ, "PYTHONPATH": str(Path(policy.__file__).parents[1])}
    for dirs, block_jax in ((onnx_dirs, True), (hlo_dirs, False)):  # ONNX needs no JAX at all
        proc = subprocess.run([sys.executable, "-c", _blocked_loader_script(dirs, block_jax)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
        for key, path in dirs.items():
            name = key.rsplit("-", 1)[0]
            got = np.asarray(result[key]).reshape(expected[name].shape)
            np.testing.assert_allclose(got, expected[name], atol=TOL, rtol=0, err_msg=key)
            assert result[key + ":queries"] == 3  # 2H + 1 steps: three chunks, one query each
        loaded = proc.stdout.split("LOADED", 1)[1]
        assert "flax" not in loaded and "steerflow.agents" not in loaded, loaded


# --------------------------------------------------------------------------- README and CLI

def readme_python_snippet() -> str:
    """The fenced python block under the `python-api` marker of README.md, verbatim."""
    match = re.search(r"<!-- python-api:[^>]*-->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md has no <!-- python-api --> python block"
    return match.group(1)


@pytest.fixture(scope="module")
def snippet_run(data_root, tmp_path_factory):
    """The README snippet run verbatim in a fresh directory (smoke preset, tiny generated data)."""
    cwd = tmp_path_factory.mktemp("readme")
    before = Path.cwd()
    os.chdir(cwd)
    try:
        namespace = {}
        exec(compile(readme_python_snippet(), "README.md:python-api", "exec"), namespace)
    finally:
        os.chdir(before)
    return cwd, namespace


@pytest.mark.slow
def test_the_readme_python_snippet_runs_as_written(snippet_run):
    cwd, ns = snippet_run
    assert (cwd / ns["run"] / "checkpoints" / "latest.msgpack").exists()
    assert ns["chunk"].shape == (5, 5) and np.all(np.abs(ns["chunk"]) <= 1.0)  # H=5, A=5, OGBench bounds
    assert ns["policy"].deterministic  # LPS


@pytest.mark.slow
def test_cli_exports_a_smoke_run_in_both_formats_and_they_act_like_the_run(snippet_run, tmp_path, capsys):
    cwd, ns = snippet_run
    run_dir = cwd / ns["run"]
    obs = np.random.default_rng(4).normal(size=(16, 28)).astype(np.float32)
    reference = policy.load(run_dir).act(obs)
    for fmt in export.FORMATS:
        out = tmp_path / fmt
        cli.main(["export", str(run_dir), "--format", fmt, "--out", str(out)])
        meta = json.loads((out / "artifact.json").read_text())
        assert meta["agent"] == "lps" and meta["step"] == 40 and meta["noise"] is None
        assert meta["dataset"]["fingerprint"] and meta["config"]["run"]["preset"] == "smoke"
        np.testing.assert_allclose(policy.load(out).act(obs), reference, atol=TOL, rtol=0)

    # a stored normalisation is applied to observations and inverted on actions
    norm = Normalization(tuple(np.linspace(-1, 1, 28)), tuple(np.linspace(0.5, 2, 28)), (-3.0,) * 5, (1.0,) * 5)
    normalization.save(run_dir, norm)
    try:
        normed = policy.load(run_dir).act(obs)
    finally:
        (run_dir / normalization.FILE_NAME).unlink()
    identity = policy.load(run_dir).act(norm.normalize_obs(obs))
    np.testing.assert_allclose(normed, norm.denormalize_action(identity.reshape(16, -1)).reshape(16, 5, 5),
                               atol=1e-5, rtol=0)


def test_export_refuses_a_run_without_a_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"run": {"agent": "lps", "task": "cube-single-task2",
                                                             "seeds": [0]}}))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "checkpoints/latest.msgpack missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="not a run directory or artifact"):
        policy.load(tmp_path)
