"""Every `steerflow ...` command line of the README and of the pages under docs/ parses and validates as written (the CLI's
own dry parse, `cli.parse`: flags, task, preset, overrides, agent config values; nothing is read
or written), and the cheap ones run: `data info`, every `--help`. The commands the error messages
print (a missing dataset) parse too."""

import re
import shlex
from pathlib import Path

import pytest

from steerflow import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
PREFIXES = ("$ steerflow ", ".venv/bin/steerflow ", "steerflow ")


def readme_commands(text: str) -> list[str]:
    """Command lines in fenced code blocks that start with `steerflow `, `.venv/bin/steerflow ` or
    `$ steerflow `, backslash continuations joined, the program name stripped."""
    commands, in_code, pending = [], False, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            in_code, pending = not in_code, None
            continue
        if not in_code:
            continue
        if pending is not None:
            pending += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(pending)
                pending = None
            continue
        prefix = next((p for p in PREFIXES if line.startswith(p)), None)
        if prefix is None:
            continue
        body = line[len(prefix):]
        if body.endswith("\\"):
            pending = body.rstrip("\\").strip()
        else:
            commands.append(body)
    return commands


def test_the_extractor_finds_continuations_prefixes_and_comments():
    text = "\n".join(["```bash", "steerflow data info   # a comment", "$ steerflow train --agent lps \\",
                      "    --seeds 0,1", ".venv/bin/steerflow eval runs/x", "make run", "```",
                      "steerflow outside a code block"])
    assert readme_commands(text) == ["data info   # a comment", "train --agent lps --seeds 0,1", "eval runs/x"]


# every page's command lines, each distinct line once (pages repeat the README's quickstart)
COMMANDS = list(dict.fromkeys(c for page in PAGES for c in readme_commands(page.read_text())))


def test_the_readme_has_commands():
    readme = readme_commands(README.read_text())
    assert len(readme) >= 5 and any(c.startswith("data generate") for c in readme)
    assert len(COMMANDS) >= 40 and any(c.startswith("data import") for c in COMMANDS)


def test_every_docs_page_with_commands_is_read():
    with_commands = {p.name for p in PAGES if readme_commands(p.read_text())}
    assert {"README.md", "get-started.md", "training.md", "robot-data.md", "online.md", "sweeps.md",
            "deploy.md"} <= with_commands


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses_as_written(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative --out paths land in an empty directory
    argv = shlex.split(command, comments=True)
    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as exit_info:
            cli.parse(argv)
        assert exit_info.value.code == 0
        assert "usage: steerflow" in capsys.readouterr().out
        return
    made = _fake_base_run(tmp_path, argv)  # `--base-from DIR` names the output of the line before
    made = _fake_import(tmp_path, argv, monkeypatch) or made
    command_object = cli.parse(argv)  # a parse or validation error exits 2 and fails the test
    assert callable(command_object)
    assert [p for p in tmp_path.iterdir() if p != made] == [], "parsing wrote files"


def _fake_import(root: Path, argv: list[str], monkeypatch):
    """For `data import FORMAT PATH` lines: PATH (validation checks only that it exists); for
    `--dataset NAME` lines: NAME's meta.json as the README's import line of NAME writes it (28-D
    observations, 5-D actions, rewards only from Minari, 64x64x3 frames for `--obs-keys` ending in
    `image`; a `data render` line's NAME: pixels only, with rewards), in a data directory of its own.
    Returns the top directory made."""
    import json

    if argv[:2] == ["data", "import"]:
        path = root / argv[3]
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True)
        return root / Path(argv[3]).parts[0]
    if "--dataset" not in argv:
        return None
    name = argv[argv.index("--dataset") + 1]
    (line,) = [c for c in COMMANDS if c.startswith(("data import", "data render")) and f"--name {name}" in c]
    fmt = "render" if line.startswith("data render") else line.split()[2]
    monkeypatch.setenv("STEERFLOW_DATA", str(root / "_data"))
    meta = root / "_data" / name / "meta.json"
    meta.parent.mkdir(parents=True)
    keys = shlex.split(line, comments=True)
    keys = keys[keys.index("--obs-keys") + 1].split(",") if "--obs-keys" in keys else []
    images = {k: [64, 64, 3] for k in keys if k.endswith("image")}  # the README names camera keys *_image
    if fmt == "render":  # a rendered visual dataset: one 64x64x3 camera, no low-dim state, task rewards
        meta.write_text(json.dumps({"kind": "imported", "has_rewards": True, "obs_dim": 0, "action_dim": 5,
                                    "image_keys": {"pixels": [64, 64, 3]}}))
        return root / "_data"
    obs_dim, action_dim = _demo_dims(shlex.split(line, comments=True)[3])
    meta.write_text(json.dumps({"kind": "imported", "has_rewards": fmt == "minari",  # Minari always stores rewards
                                "obs_dim": obs_dim, "action_dim": action_dim, "image_keys": images,
                                "options": {"obs_keys": keys}}))
    return root / "_data"


def _demo_dims(path: str) -> tuple[int, int]:
    """(obs_dim, action_dim) of the file a README `data demos SOURCE --out PATH` line writes (its
    env's: Fetch 25 + 3 + 3 and 4), else of the cube-single files the other lines import (28, 5)."""
    for c in COMMANDS:
        argv = shlex.split(c, comments=True)
        if argv[:2] == ["data", "demos"] and argv[argv.index("--out") + 1] == path:
            return (31, 4) if argv[2] == "fetch-pick-and-place" else (28, 5)
    return 28, 5


def _fake_base_run(root: Path, argv: list[str]):
    """For a `--base-from DIR` line: DIR as the BC-FM run the README trains just before it (its
    config and a checkpoint file; validation reads only those). Returns the top directory made."""
    import json

    from steerflow.agents import bc_fm
    from steerflow.config import to_dict

    if "--base-from" not in argv:
        return None
    base = root / argv[argv.index("--base-from") + 1]
    seeds = [int(s) for s in argv[argv.index("--seeds") + 1].split(",")] if "--seeds" in argv else [0]
    (base / "checkpoints").mkdir(parents=True)
    (base / "checkpoints" / "latest.msgpack").write_bytes(b"")
    (base / "config.json").write_text(json.dumps({"run": {"agent": "bc-fm", "task": "cube-single-task2",
                                                          "seeds": seeds}, "agent_config": to_dict(bc_fm.Config())}))
    return root / Path(argv[argv.index("--base-from") + 1]).parts[0]


CHEAP = [c for c in COMMANDS if shlex.split(c, comments=True)[:2] == ["data", "info"]]


@pytest.mark.parametrize("command", CHEAP or ["data info"])
def test_cheap_readme_commands_run(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEERFLOW_DATA", str(tmp_path / "data"))
    cli.main(shlex.split(command, comments=True))
    assert "data directory:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "generate"], ["data", "import"], ["data", "info"], ["train"], ["eval"],
                                  ["report"], ["sweep"], ["toy"]])
def test_help_runs_for_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: steerflow" in out and "{None}" not in out and "command:" not in out


def test_the_command_a_missing_dataset_error_prints_parses(tmp_path):
    from steerflow.data.tasks import load_task_dataset

    with pytest.raises(FileNotFoundError) as err:
        load_task_dataset("cube-single-task2", episodes=7, seed=3, root=tmp_path, generate_if_missing=False)
    (printed,) = re.findall(r"`steerflow ([^`]+)`", str(err.value))
    command = cli.parse(shlex.split(printed))
    assert (command.command.domain, command.command.episodes, command.command.seed) == ("cube-single", 7, 3)
