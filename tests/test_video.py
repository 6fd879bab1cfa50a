"""Videos of a policy (`steerflow.video`, `steerflow eval RUN --video N`, `video_every`): the
marking drawn into the frames, the files written for an env spec of the contract (a fake env, no
MuJoCo), and end to end from a smoke run in the real cube-single env (~3 rendered frames/s on a
CPU, so the recorded episodes are cut to a few steps)."""

import json

import gymnasium
import numpy as np
import pytest

from steerflow import cli
from steerflow.video import GREEN, RED, mark, read_frames, record_episodes


def is_color(pixels: np.ndarray, color) -> bool:
    """Pixels (..., 3) within the codec's error of `color`."""
    return bool(np.all(np.abs(pixels.reshape(-1, 3).astype(int).mean(0) - color) < 40))


def border(frame: np.ndarray) -> np.ndarray:
    """The outermost row and column of every side, corners and the text box left out."""
    h, w = frame.shape[:2]
    return np.concatenate([frame[-1, 8:-8], frame[h // 2:-8, 0], frame[h // 2:-8, -1], frame[0, w - w // 4:-8]])


def test_marks_are_a_green_or_red_border_and_a_changing_text_line():
    frame = np.full((200, 200, 3), 90, np.uint8)
    plain, reached, failed = mark(frame, 0, 3, False, False), mark(frame, 0, 3, True, False), mark(frame, 0, 3, False, True)
    assert np.all(border(plain) == 90) and is_color(border(reached), GREEN) and is_color(border(failed), RED)
    text = plain[4:20, 4:80]  # inside the border: a black box with white glyphs
    assert (text == 0).all(-1).mean() > 0.4 and (text == 255).all(-1).sum() > 50
    assert not np.array_equal(text, mark(frame, 0, 4, False, False)[4:20, 4:80])  # the step is written
    assert not np.array_equal(text, mark(frame, 1, 3, False, False)[4:20, 4:80])  # and the episode
    assert np.array_equal(frame, np.full((200, 200, 3), 90, np.uint8))  # the env's frame is left alone


class Reach(gymnasium.Env):
    """Succeeds (and ends) at step 3 when reset with an even seed, never with an odd one."""

    observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        self.t, self.solvable = 0, seed % 2 == 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        success = self.solvable and self.t >= 3
        return np.zeros(2, np.float32), 0.0, success, False, {"success": success}

    def render(self):
        return np.full((96, 128, 3), 90, np.uint8)


class ReachSpec:  # the env-spec contract of steerflow.envs, nothing more
    name, obs_dim, action_dim, episode_length = "reach", 2, 1, 50

    def make(self, render_mode=None):
        return gymnasium.wrappers.TimeLimit(Reach(), self.episode_length)


def test_a_contract_env_is_filmed_chunk_by_chunk_with_its_outcome_marked_and_named(tmp_path):
    calls = []

    def policy(obs):
        calls.append(obs.shape)
        return np.zeros((len(obs), 2))  # chunks of H=2 one-dimensional actions

    paths = record_episodes(ReachSpec(), policy, horizon=2, episodes=2, out_dir=tmp_path, step=7, max_steps=5)
    assert [p.name for p in paths] == ["step_00000007_ep0_success.mp4", "step_00000007_ep1_failure.mp4"]
    assert sorted(tmp_path.iterdir()) == paths  # no temporary file is left
    assert calls == [(1, 2)] * 5  # once per chunk: steps 1-2, 3 | 1-2, 3-4, 5
    solved, failed = read_frames(paths[0]), read_frames(paths[1])
    assert solved.shape == (4, 96, 128, 3) and failed.shape == (6, 96, 128, 3)  # reset + one per step
    assert not is_color(border(solved[2]), GREEN) and is_color(border(solved[3]), GREEN)
    assert not any(is_color(border(f), RED) for f in failed[:-1]) and is_color(border(failed[-1]), RED)
    # filmed again with the other outcome, an episode's old file goes
    record_episodes(ReachSpec(), policy, horizon=2, episodes=1, out_dir=tmp_path, step=7, seed=1, max_steps=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000007_ep0_failure.mp4", paths[1].name]


def test_a_smoke_run_films_itself_in_training_and_eval_films_it_again(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(["train", "--agent", "bc-mf", "--task", "cube-single-task2", "--preset", "smoke", "--out", str(out),
              "--train-set", "video_every=40", "video_steps=2"])
    trained = read_frames(out / "video" / "step_00000040_ep0_failure.mp4")
    assert trained.shape == (3, 200, 200, 3)  # video_steps=2: reset + 2 steps
    capsys.readouterr()
    cli.main(["eval", str(out), "--video", "1", "--video-steps", "6", "--video-dir", str(tmp_path / "videos")])
    printed = capsys.readouterr().out
    path = tmp_path / "videos" / "step_00000040_ep0_failure.mp4"  # 6 steps cannot solve the task
    assert str(path) in printed and "1 video(s)" in printed and sorted(path.parent.iterdir()) == [path]
    frames = read_frames(path)
    assert frames.shape == (7, 200, 200, 3) and frames.std() > 10  # the scene, not a blank image
    assert not is_color(border(frames[0]), RED) and is_color(border(frames[-1]), RED)
    assert json.loads((out / "config.json").read_text())["train_config"]["video_every"] == 40


@pytest.mark.parametrize("args, message", [
    (["--video", "0"], "--video 0"),
    (["--video-dir", "v"], "--video-dir v: only with --video"),
    (["--video", "1", "--video-steps", "0"], "--video-steps 0"),
    (["--video", "1", "--video-dir", "FILE"], "is not a directory"),
])
def test_bad_video_flags_exit_2_naming_the_flag(tmp_path, args, message, capsys):
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", str(tmp_path / "no-run"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_without_the_video_extra_video_flags_exit_2(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    for argv, flag in ((["eval", str(tmp_path), "--video", "1"], "--video"),
                       (["train", "--preset", "smoke", "--out", str(tmp_path / "x"), "--train-set", "video_every=40"],
                        "video_every=40")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and flag in err and "steerflow[video]" in err
    assert not (tmp_path / "x").exists()
