"""Only rendering needs OpenGL (`steerflow.gl`): where the library `MUJOCO_GL` names is broken, as on
a GPU image without libEGL, a smoke run still trains and evaluates on states, saying rendering is
off, and a video is refused with exit 2 naming the library. The broken library is a real shared
object without EGL's entry points (a copy of libm), shadowing the system's through LD_LIBRARY_PATH,
so `import mujoco` fails exactly as it does there."""

import ctypes.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def broken_egl(tmp_path_factory) -> dict:
    libm = ctypes.util.find_library("m")
    found = [p for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                         "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64") if (p := Path(d) / libm).exists()]
    lib_dir = tmp_path_factory.mktemp("broken-egl")
    for name in ("libEGL.so", "libEGL.so.1"):
        shutil.copy(found[0], lib_dir / name)
    return {**os.environ, "MUJOCO_GL": "egl", "LD_LIBRARY_PATH": str(lib_dir),
            "STEERFLOW_DATA": str(tmp_path_factory.mktemp("data"))}


def _run(env: dict, *code_or_args: str, cli: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "steerflow.cli", *code_or_args] if cli else [sys.executable, "-c", *code_or_args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def test_the_broken_library_breaks_a_plain_mujoco_import(broken_egl):
    """The premise: without `steerflow.gl`, importing MuJoCo dies in this environment."""
    plain = _run(broken_egl, "import mujoco", cli=False)
    assert plain.returncode != 0 and "AttributeError" in plain.stderr


@pytest.mark.slow
def test_training_and_evaluation_need_no_opengl_and_a_video_is_refused(broken_egl, tmp_path):
    out = tmp_path / "run"
    trained = _run(broken_egl, "train", "--agent", "bc-mf", "--task", "cube-single-task2", "--preset", "smoke",
                   "--out", str(out))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "MUJOCO_GL=egl but libEGL does not load; rendering is off" in trained.stderr
    assert (out / "final.json").exists()
    filmed = _run(broken_egl, "eval", str(out), "--video", "1")
    assert filmed.returncode == 2 and "Traceback" not in filmed.stderr
    assert "--video: a video needs OpenGL" in filmed.stderr and "libegl1" in filmed.stderr


def test_an_unset_backend_is_chosen_among_those_that_load(broken_egl):
    """With MUJOCO_GL unset and EGL broken, OSMesa is taken where it loads, else rendering is off."""
    env = {k: v for k, v in broken_egl.items() if k != "MUJOCO_GL"}
    chosen = _run(env, "from steerflow import gl; print(gl.settle(), gl.loads('osmesa')); import mujoco", cli=False)
    assert chosen.returncode == 0, chosen.stderr
    backend, osmesa = chosen.stdout.split()
    assert backend == ("osmesa" if osmesa == "True" else "disable")
