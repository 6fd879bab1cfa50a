"""Videos of a policy's episodes: `steerflow eval RUN --video N` and `video_every` in training.

Episodes run exactly as the evaluation runs them (`steerflow.envs.pool.run_episodes`: the policy is
called on the observation once per chunk of H actions, executed open-loop; episode i resets with
seed `seed·100003 + i`), in one env built in this process by the spec's
`make(render_mode="rgb_array")` (`steerflow.envs`) and rendered after `reset` and after every
step. Frame 0 shows the initial state and frame t the state after the t-th action, so an episode
of T steps gives T+1 frames, each (h, w, 3) uint8 as `env.render()` returns it.

Marking, drawn with numpy: a green border from the frame after the first step whose
`info["success"]` is true; a red border on the last frame of a failed episode (an episode succeeds
when `info["success"]` holds at its last step, as in the evaluation); and a text line
`EP i T t [SUCCESS|FAILURE]` at the top left. Each episode streams into `.<name>.<pid>-<hex>.mp4`
and is renamed to `step_XXXXXXXX_ep{i}_{success|failure}.mp4` when it ends (`XXXXXXXX`: the
checkpoint's training step). Rendering on a CPU runs at about 3 frames/s (EGL on llvmpipe; the
frame size hardly matters), so `max_steps` cuts episodes short.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from pathlib import Path
from typing import Callable

import gymnasium
import numpy as np

VIDEO_DIR = "video"
FPS = 20
GREEN, RED, WHITE = (0, 200, 0), (220, 0, 0), (255, 255, 255)

# a 3x5 pixel font: the characters of the overlay, rows top to bottom
_GLYPHS = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###", "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###", "7": "### ..# ..# .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###", "A": ".#. #.# ### #.# #.#", "C": "### #.. #.. #.. ###",
    "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..", "I": "### .#. .#. .#. ###",
    "L": "#.. #.. #.. #.. ###", "P": "##. #.# ##. #.. #..", "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.", "U": "#.# #.# #.# #.# ###",
    " ": "... ... ... ... ...",
}
_FONT = {c: np.array([[p == "#" for p in row] for row in g.split()]) for c, g in _GLYPHS.items()}


def require_video(flag: str) -> None:
    """ValueError naming `flag` when the `video` extra (imageio, imageio-ffmpeg) is not installed or
    this process has no OpenGL to render with (`steerflow.gl`)."""
    import importlib.util

    missing = [m for m in ("imageio", "imageio_ffmpeg") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{flag}: videos need the video extra ({', '.join(missing)} not installed): "
                         "pip install 'steerflow[video]'")
    from steerflow import gl

    try:
        gl.require(f"{flag}: a video")
    except RuntimeError as err:
        raise ValueError(str(err)) from None


def draw_text(frame: np.ndarray, text: str, scale: int = 2, at: int = 0) -> None:
    """Draw `text` (the characters of `_GLYPHS`, each 3x5 pixels times `scale`) in white on a
    black box whose top left corner is pixel (at, at) of an (h, w, 3) uint8 frame, in place;
    glyphs beyond the right edge are left out."""
    pad, cell = scale, 4 * scale  # a glyph is 3 pixels wide, plus one of spacing
    text = text[: max(0, (frame.shape[1] - 2 * at - 2 * pad) // cell)]
    frame[at: at + 5 * scale + 2 * pad, at: at + len(text) * cell + 2 * pad] = 0
    for i, char in enumerate(text):
        glyph = np.kron(_FONT[char], np.ones((scale, scale), bool))
        top, left = at + pad, at + pad + i * cell
        frame[top: top + 5 * scale, left: left + 3 * scale][glyph] = WHITE


def mark(frame: np.ndarray, episode: int, t: int, reached: bool, failed: bool) -> np.ndarray:
    """A marked copy of frame t of `episode`: a border (2 pixels per 100 of the frame's smaller
    side) green once success was `reached`, red when the episode `failed` (its last frame), and
    the text line inside it at the top left."""
    frame = np.array(frame, np.uint8)  # a copy: the env may reuse its render buffer
    scale = max(1, min(frame.shape[:2]) // 100)
    b = 2 * scale
    if failed or reached:
        color = RED if failed else GREEN
        frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = color, color, color, color
    status = " FAILURE" if failed else " SUCCESS" if reached else ""
    draw_text(frame, f"EP {episode} T {t}{status}", scale, at=b)
    return frame


@contextlib.contextmanager
def _ffmpeg_forks():
    """JAX warns of any fork in its process; imageio-ffmpeg's ffmpeg is a fork-exec, which is safe."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        yield


def video_name(step: int, episode: int, success: bool) -> str:
    return f"step_{step:08d}_ep{episode}_{'success' if success else 'failure'}.mp4"


class _Filmed(gymnasium.Wrapper):
    """An env whose every reset starts an MP4 of a new episode and whose every step adds a marked
    frame; when the episode ends, its file is renamed to `video_name` (an older recording of that
    step and episode with the other outcome goes)."""

    def __init__(self, env, out_dir: Path, step: int, fps: int, on_frame: Callable[[bool], None]):
        super().__init__(env)
        self.out_dir, self.step_id, self.fps, self.on_frame = out_dir, step, fps, on_frame
        self.episode, self.writer, self.paths = -1, None, []

    def reset(self, **kwargs):
        import imageio

        obs, info = self.env.reset(**kwargs)
        self._discard()  # an episode left unfinished
        self.episode, self.t, self.reached = self.episode + 1, 0, False
        self.tmp = self.out_dir / f".{video_name(self.step_id, self.episode, False)}.{os.getpid()}-{secrets.token_hex(4)}.mp4"
        self.writer = imageio.get_writer(self.tmp, format="FFMPEG", fps=self.fps, macro_block_size=2)
        self._frame(failed=False, done=False)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success, done = bool(info.get("success", False)), bool(terminated or truncated)
        self.t += 1
        self.reached |= success
        self._frame(failed=done and not success, done=done)
        if done:
            self.writer.close()
            self.writer = None
            path = self.out_dir / video_name(self.step_id, self.episode, success)
            os.replace(self.tmp, path)
            (self.out_dir / video_name(self.step_id, self.episode, not success)).unlink(missing_ok=True)
            self.paths.append(path)
        return obs, reward, terminated, truncated, info

    def _frame(self, failed: bool, done: bool) -> None:
        frame = mark(self.env.render(), self.episode, self.t, self.reached, failed)
        with _ffmpeg_forks():  # the first frame starts ffmpeg
            self.writer.append_data(frame)
        self.on_frame(done)

    def _discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.tmp.unlink(missing_ok=True)

    def close(self):
        self._discard()
        super().close()


class _FilmedSpec:
    """`spec` with its env filmed, for `EnvPool` (which builds its envs through `make()`)."""

    def __init__(self, spec, max_steps: int | None, **film):
        self.spec, self.max_steps, self.film, self.env = spec, max_steps, film, None

    def make(self, render_mode=None):
        env = self.spec.make(render_mode="rgb_array")
        if self.max_steps:
            env = gymnasium.wrappers.TimeLimit(env, self.max_steps)
        self.env = _Filmed(env, **self.film)
        return self.env


def record_episodes(spec, policy: Callable[[np.ndarray], np.ndarray], horizon: int, episodes: int,
                    out_dir: Path, step: int, seed: int = 0, max_steps: int | None = None, fps: int = FPS,
                    show_progress: bool = False) -> list[Path]:
    """Roll out `episodes` episodes of `policy(obs (1, obs_dim)) -> (1, horizon·action_dim)`
    (env-space observations and actions) in `spec`'s env, each cut at `max_steps` steps if given,
    and write one MP4 per episode into `out_dir`; returns their paths in episode order. A bar
    shows frames written (at most `max_steps or spec.episode_length` + 1 per episode) and the ETA."""
    from tqdm import tqdm

    from steerflow.envs.pool import EnvPool, run_episodes

    require_video("steerflow.video")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_episode = (max_steps or spec.episode_length) + 1
    bar = tqdm(total=episodes * per_episode, desc=f"video of step {step}", unit="frame", leave=False,
               dynamic_ncols=True, disable=not show_progress)

    def on_frame(done: bool) -> None:
        bar.update(1)
        if done:  # an episode that ended early: the bar jumps to the next one's start
            bar.update(-(-bar.n // per_episode) * per_episode - bar.n)

    filmed = _FilmedSpec(spec, max_steps, out_dir=out_dir, step=step, fps=fps, on_frame=on_frame)
    try:
        with EnvPool(filmed, 1, workers=0) as pool:
            run_episodes(pool, policy, horizon, episodes, seed=seed)
            return list(filmed.env.paths)
    finally:
        bar.close()


def seed_actor(policy, states, seed: int, index: int = 0, should_stop: Callable[[], bool] | None = None):
    """`obs -> chunk` of seed `index`'s policy `policy(state, obs, key)` (one key split per call);
    `should_stop()` true before a call raises `EvalStopped`, as in the evaluation."""
    import jax

    from steerflow.errors import EvalStopped

    state = jax.tree.map(lambda x: x[index], states)
    key = jax.random.PRNGKey(seed)

    def act(obs):
        nonlocal key
        if should_stop is not None and should_stop():
            raise EvalStopped
        key, sub = jax.random.split(key)
        return np.asarray(policy(state, np.asarray(obs, np.float32), sub))

    return act


def during_training(out: Path, tc, step: int, task, policy, states, quiet: bool, should_stop=None) -> None:
    """At an evaluation step that is a multiple of `tc.video_every`: `tc.video_episodes` videos of
    the first seed's `policy(state, obs, key)` (env-space) into OUT/video, on the episodes that
    evaluation began with (reset seed = the step)."""
    if not tc.video_every or step % tc.video_every or task is None:
        return
    act = seed_actor(policy, states, step, should_stop=should_stop)
    paths = record_episodes(task, act, tc.horizon, tc.video_episodes, Path(out) / VIDEO_DIR, step, seed=step,
                            max_steps=tc.video_steps or None, show_progress=not quiet)
    if not quiet:
        from tqdm import tqdm

        tqdm.write(f"step {step}: video " + ", ".join(str(p) for p in paths))


def write_gif(path: Path, frames, fps: int = 10) -> Path:
    """Frames (T, h, w, 3) uint8 as a looping GIF (for docs; keep T·h·w small)."""
    import imageio.v3 as iio

    iio.imwrite(path, np.asarray(frames, np.uint8), duration=1000 / fps, loop=0)
    return Path(path)


def write_strip(path: Path, frames, count: int = 4) -> Path:
    """A still for docs: `count` evenly spaced frames of (T, h, w, 3), first and last included,
    side by side, as a PNG (or any format imageio infers from `path`)."""
    import imageio.v3 as iio

    frames = np.asarray(frames, np.uint8)
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    iio.imwrite(path, np.concatenate(list(frames[picks]), axis=1))
    return Path(path)


def read_frames(path: Path) -> np.ndarray:
    """An MP4's frames (T, h, w, 3) uint8."""
    import imageio

    with _ffmpeg_forks(), imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([frame for frame in reader.iter_data()])  # (len(reader) is inf)
