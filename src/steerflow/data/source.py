"""What a run trains on and where it is evaluated: an OGBench task (generated play data, raw
observations, actions already in [-1, 1]: identity normalisation) or an imported dataset
(``imports``: observations standardised, actions mapped into [-1, 1] with the statistics stored at
import, a reward mode), evaluated in an OGBench env when the run names one (``--eval-task``: the
policy's inputs are normalised and its actions mapped back) and otherwise by an offline metric:
the mean squared error, in normalised action units, between the policy's chunk and the held-out
demos' chunk at up to ``OFFLINE_EVAL_STARTS`` starts of the validation split (lower is better; the
whole split when it is smaller). A dataset with camera keys trains on packed uint8 observation
rows (`steerflow.encoders`): `run_layout` gives their layout, `obs_dim` is its packed width.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .imports import DATASET_PREFIX, apply_reward_mode, imported_meta, load_imported, normalize_transitions
from .normalization import Normalization

OFFLINE_EVAL_STARTS = 512


def eval_task(run):
    """The env spec a run is evaluated (and fine-tuned) in: an OGBench TaskSpec, a user's env
    (`--env`: a probed `GymEnvSpec`, dict observations flattened in the dataset's key order, the
    run's reward mode), or None (an imported dataset scored offline on its held-out demos)."""
    from .tasks import parse_task

    if getattr(run, "env", None):
        from steerflow.envs.gym_env import GymEnvSpec

        meta = imported_meta(run.dataset)
        mode = run.reward or ("given" if meta["has_rewards"] else "sparse-success")
        return GymEnvSpec.from_json(run.env, reward=mode, obs_keys=meta.get("options", {}).get("obs_keys")).probe()
    return None if run.task.startswith(DATASET_PREFIX) else parse_task(run.task)


def run_layout(run):
    """The `encoders.ObsLayout` of a run's imported dataset with camera keys, else None (cheap)."""
    if getattr(run, "dataset", None) is None:
        return None
    meta = imported_meta(run.dataset)
    if not meta.get("image_keys"):
        return None
    from steerflow.encoders import ObsLayout

    return ObsLayout.from_shapes(meta["image_keys"], meta["obs_dim"])


def run_dims(run) -> tuple[int, int]:
    """(obs_dim, action_dim) of a run's data, read without loading it (for `check_run`); with camera
    keys obs_dim is the packed row's width (`run_layout`)."""
    task = eval_task(run)
    if getattr(run, "dataset", None) is None:
        return task.obs_dim, task.action_dim
    meta = imported_meta(run.dataset)
    if run.reward is None and not meta["has_rewards"]:
        apply_reward_mode({}, None, run.dataset)  # the error naming --reward
    if run.reward == "given" and not meta["has_rewards"]:
        raise ValueError(f"--reward given: dataset {run.dataset} has no rewards; use --reward sparse-success")
    layout = run_layout(run)
    if layout is not None and task is not None:  # an env of state observations cannot score a frame policy
        raise ValueError(f"--eval-task/--env {task.name}: its env gives {task.obs_dim}-D state observations, dataset "
                         f"{run.dataset} camera frames {layout.keys}; image runs are scored offline on their "
                         "held-out demos (leave out --eval-task): in-env evaluation of image runs is not built")
    if task is not None and (task.obs_dim, task.action_dim) != (meta["obs_dim"], meta["action_dim"]):
        flag = "--env" if getattr(run, "env", None) else "--eval-task"
        raise ValueError(f"{flag} {task.name}: its env has observations of {task.obs_dim} and actions of "
                         f"{task.action_dim} dimensions, dataset {run.dataset} {meta['obs_dim']} and {meta['action_dim']}")
    return (meta["obs_dim"] if layout is None else layout.packed_dim), meta["action_dim"]


def load_run_data(run, tc, workers: int = 1):
    """(train transitions, val transitions or None, data info, Normalization) for a run; the info
    holds the data's `content_fingerprint` as "content_sha256"."""
    if getattr(run, "dataset", None) is None:
        from .tasks import load_task_dataset, parse_task

        train, val, info = load_task_dataset(parse_task(run.task), episodes=tc.dataset_episodes, seed=tc.dataset_seed,
                                             episode_steps=tc.dataset_episode_steps, workers=workers)
        info = {**info, "content_sha256": content_fingerprint(train, val)}
        return train, val, info, Normalization.identity(info["obs_dim"], info["action_dim"])
    train, val, info, norm = load_imported(run.dataset)
    info = {**info, "content_sha256": content_fingerprint(train, val)}
    train, mode = apply_reward_mode(train, run.reward, run.dataset)
    train = normalize_transitions(train, norm, run.dataset)
    if val is not None:
        val = normalize_transitions(apply_reward_mode(val, mode, run.dataset)[0], norm, run.dataset)
    return train, val, {**info, "reward": mode}, norm


def content_fingerprint(train: dict, val: dict | None) -> str:
    """sha256 of a dataset's arrays as loaded (names, dtypes, shapes, values): equal for equal data
    however the files were written (a regenerated or re-imported npz differs in its zip timestamps)."""
    h = hashlib.sha256()
    for split, arrays in (("train", train), ("val", val or {})):
        for key in sorted(arrays):
            a = np.ascontiguousarray(arrays[key])
            h.update(f"{split}/{key}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.data)
    return h.hexdigest()


def check_same_dataset(run_dir, info: dict, flag: str) -> None:
    """Refuse to continue `run_dir` (`--resume`, `--from`) on other data than it trained on: its
    run_info.json's dataset fingerprint against `info`'s (the content one when it has it, else
    the training file's sha256). A run directory without run_info.json is not checked."""
    path = Path(run_dir) / "run_info.json"
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text()).get("dataset") or {}
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{flag} {run_dir}: cannot read {path} ({err}); it is damaged") from None
    key = "content_sha256" if stored.get("content_sha256") else "fingerprint"
    if stored.get(key) is None or stored.get(key) == info.get(key):
        return
    what = "dataset content sha256" if key == "content_sha256" else "training-file sha256"
    raise ValueError(f"{flag} {run_dir}: it was trained on other data than is loaded now ({what}: stored "
                     f"{stored[key]} for {stored.get('dataset_dir', '(no directory recorded)')}, now {info.get(key)} "
                     f"for {info.get('dataset_dir')}). Its checkpoint continues only on the data it trained on: "
                     "restore that data, or train a new run on this data (another --out)")


def normalized_policy(policy, norm: Normalization, layout=None):
    """policy(state, obs, key) on env-space observations, returning env-space action chunks. With a
    layout, `obs` is a dict {camera key: (E, H, W, C) uint8, "state": (E, D)} (`pack_observations`)."""
    if norm.is_identity() and layout is None:
        return policy

    def act(state, obs, key):
        rows = norm.normalize_obs(obs) if layout is None else pack_observations(obs, norm, layout)
        return norm.denormalize_action(policy(state, rows, key))

    return act


def pack_observations(obs: dict, norm: Normalization, layout) -> np.ndarray:
    """Raw image observations -> packed uint8 rows (B, packed_dim): {camera key: (B, H, W, C) uint8
    frames, "state": (B, D) env-space low-dim state (omit it when D = 0)}; the state is normalised."""
    if not isinstance(obs, dict):
        raise ValueError(f"observations of a run on image keys {layout.keys} are a dict {{key: (B, H, W, C) uint8"
                         f"{', state: (B, D)' if layout.state_dim else ''}}}, got {type(obs).__name__}")
    frames = layout.flat_frames(obs)
    state = np.asarray(obs.get("state", np.zeros((len(frames), 0))), np.float32)
    if state.shape != (len(frames), layout.state_dim):
        raise ValueError(f"observation 'state' of shape {state.shape}: expected ({len(frames)}, {layout.state_dim})")
    return layout.pack(frames, np.asarray(norm.normalize_obs(state), np.float32))


def offline_split(run, val: dict | None, quiet: bool = False) -> str:
    """Which demos a run without an env is scored on: "val" (its held-out demos) or "train" (a
    dataset of one demo holds none out; said once unless `quiet`)."""
    if val is not None:
        return "val"
    if not quiet:
        print(f"dataset {run.dataset} holds no held-out demo (it has one demo): the offline action MSE below is "
              "measured on the training demo, so it shows how well the policy fits it, not how it generalises; "
              "import two or more demos for a held-out score", flush=True)
    return "train"


def offline_metric_name(scored_on: str) -> str:
    """How a run's offline score is shown: over held-out demos, or (none held out) the training ones."""
    return "held-out action MSE" if scored_on == "val" else "action MSE on the training demo (none held out)"


def offline_eval_starts(val: dict, horizon: int) -> np.ndarray:
    from .chunks import valid_start_indices

    starts = valid_start_indices(val["terminals"], horizon)
    if len(starts) > OFFLINE_EVAL_STARTS:
        starts = starts[np.linspace(0, len(starts) - 1, OFFLINE_EVAL_STARTS).astype(int)]
    return starts


def offline_action_mse(agent, states, val_ds, starts, policy, seed: int) -> np.ndarray:
    """(S,) per-seed mean squared error between each policy's chunk and the demos' chunk."""
    import jax
    import jax.numpy as jnp

    from .chunks import chunks_at

    batch = chunks_at(val_ds, jnp.asarray(starts))
    num_seeds = jax.tree.leaves(states.params)[0].shape[0]
    out = []
    for i in range(num_seeds):
        state = jax.tree.map(lambda x: x[i], states)
        chunk = policy(state, batch["observations"], jax.random.PRNGKey(seed + i))
        out.append(float(jnp.mean((chunk - batch["actions"]) ** 2)))
    return np.asarray(out)
