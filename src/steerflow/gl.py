"""MuJoCo's OpenGL backend, chosen so that only rendering needs one.

`import mujoco` loads the backend `MUJOCO_GL` names, and where that library is missing or broken
(a GPU image without libEGL, a container without Mesa) the import itself dies with an
`AttributeError`, although training, data generation and evaluation on states never draw a pixel.
`settle()` runs before MuJoCo is first imported: it keeps a backend that loads, picks one when
`MUJOCO_GL` is unset (EGL, then OSMesa, else none), and turns rendering off (`MUJOCO_GL=disable`)
with a one-line note when the named one does not load. What renders (videos, pixel observations)
calls `require(what)`, which names the missing library and what to install.
"""

from __future__ import annotations

import ctypes
import os
import sys

# backend -> (library name as the loader spells it, a symbol the backend calls first)
LIBRARIES = {"egl": ("EGL", "eglQueryString"), "osmesa": ("OSMesa", "OSMesaCreateContextExt")}
OFF = ("disable", "disabled", "off", "false", "0")
_unusable: str | None = None  # why rendering is off in this process, once settle() turned it off


def loads(backend: str) -> bool:
    """Whether `backend`'s library loads with its entry point, tried in PyOpenGL's order
    (lib<name>.so, then .so.9 down to .so.0): the file it would pick is the one that must work."""
    if backend not in LIBRARIES:
        return True  # glfw and others: nothing is loaded at import
    name, symbol = LIBRARIES[backend]
    for filename in [f"lib{name}.so"] + [f"lib{name}.so.{i}" for i in range(9, -1, -1)]:
        try:
            library = ctypes.CDLL(filename, ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return hasattr(library, symbol)
    return False


def settle() -> str:
    """Make `MUJOCO_GL` safe to import MuJoCo with, once per process; returns the backend."""
    global _unusable
    asked = os.environ.get("MUJOCO_GL", "").strip().lower()
    if asked in OFF or "mujoco" in sys.modules:
        return asked  # too late to change, or rendering is off by choice
    if not asked:
        chosen = next((b for b in ("egl", "osmesa") if loads(b)), "disable")
        os.environ["MUJOCO_GL"] = chosen
        if chosen == "disable":
            _unusable = "neither libEGL nor libOSMesa loads"
        return chosen
    if loads(asked):
        return asked
    _unusable = f"MUJOCO_GL={asked} but lib{LIBRARIES[asked][0]} does not load"
    os.environ["MUJOCO_GL"] = "disable"
    print(f"steerflow: {_unusable}; rendering is off in this process (training, data generation and "
          "evaluation on states do not need it)", file=sys.stderr)
    return "disable"


def require(what: str) -> None:
    """Refuse work that renders when this process has no OpenGL, saying what to install."""
    settle()
    reason = _unusable or (f"MUJOCO_GL={os.environ['MUJOCO_GL']}"
                           if os.environ.get("MUJOCO_GL", "").lower() in OFF else None)
    if reason:
        raise RuntimeError(f"{what} needs OpenGL to render, and {reason}. Install EGL (Debian: apt install "
                           "libegl1) and set MUJOCO_GL=egl, or Mesa's software renderer (apt install "
                           "libosmesa6) and set MUJOCO_GL=osmesa")
