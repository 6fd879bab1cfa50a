"""A user's own Gymnasium environment as a run's evaluation and online-fine-tuning env
(`steerflow train --dataset NAME --env MODULE:FACTORY`).

`GymEnvSpec` names the env by its factory (``"package.module:function"``, called with the
``--env-set KEY=VALUE`` keyword arguments, or a registered Gymnasium id such as
``"FetchPickAndPlace-v4"``) and says how its steps are read:

* **observations**: an array observation is flattened; a dict observation (e.g. ``observation``,
  ``achieved_goal``, ``desired_goal``) is flattened key by key in ``obs_keys`` order — the order the
  dataset's keys were concatenated in at import (its ``meta.json`` ``options.obs_keys``), recorded
  in the run's ``config.json``. Each key's array is flattened C-order.
* **success**: ``info["success"]``, else ``info["is_success"]``, else ``success_fn(obs, info)`` when
  ``success`` names a callable ``"module:function"`` (an info key name is also accepted). The episode
  ends at the first successful step, as a demonstration does (``end_on_success``), or at the time
  limit ``max_episode_steps`` (the env's own ``spec.max_episode_steps`` when not given).
* **rewards and masks** (online transitions, `rewards_masks`), the same as the dataset's on both
  sides of the offline-to-online switch (`steerflow.data.imports.apply_reward_mode`): transition
  ``(s_t, a_t, s_{t+1})`` with ``success(s_{t+1})`` gets ``mask = 0``, else 1; its reward is ``0`` on
  success and ``-1`` otherwise under ``sparse-success`` (a demo's last transition is its successful
  one), and the env's own reward under ``given``.

Actions reach the env in its own units (the run's stored normalisation is inverted by the caller)
and are clipped to its ``action_space`` bounds.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

REWARD_MODES = ("sparse-success", "given")
ENV_PREFIX = "env:"  # a run's task name when it is evaluated in a user's env


def _resolve(target: str, what: str):
    """The object `module:attr` names (ValueError naming `what` otherwise)."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"{what} {target!r}: expected MODULE:FUNCTION, e.g. steerflow.envs.fetch:pick_and_place")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"{what} {target!r}: cannot import module {module!r} ({err})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {target!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {target!r}: {attr!r} is not callable")
    return obj


def flatten_obs(obs, obs_keys: tuple[str, ...] | None) -> np.ndarray:
    """(D,) float32: an array observation flattened, or a dict's `obs_keys` flattened and concatenated."""
    if isinstance(obs, dict):
        if not obs_keys:
            raise ValueError(f"the env's observations are a dict with keys {sorted(obs)}; the run needs their "
                             "order (the dataset's --obs-keys at import)")
        missing = [k for k in obs_keys if k not in obs]
        if missing:
            raise ValueError(f"the env's observation dict has no key(s) {missing} (has {sorted(obs)}); the dataset "
                             f"was imported with --obs-keys {','.join(obs_keys)}")
        return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in obs_keys])
    return np.asarray(obs, np.float32).reshape(-1)


@dataclass(frozen=True)
class GymEnvSpec:
    """A user's env, picklable (worker processes rebuild it with `make`)."""

    factory: str  # "module:function" or a registered Gymnasium id
    kwargs: tuple = ()  # sorted (key, value) pairs passed to the factory
    obs_keys: tuple[str, ...] | None = None  # flatten order of dict observations
    max_episode_steps: int | None = None  # None: the env's own time limit
    success: str | None = None  # info key or "module:function" success_fn(obs, info) -> bool
    reward: str = "sparse-success"  # given | sparse-success (the run's --reward)
    end_on_success: bool = True
    # filled by `probe`: what the env turned out to be
    obs_dim: int = 0
    action_dim: int = 0
    episode_length: int = 0

    @property
    def name(self) -> str:
        return ENV_PREFIX + self.factory

    def make(self, render_mode: str | None = None):
        """The env wrapped by `_Adapter` (flat float32 observations, info["success"], time limit)."""
        kwargs = dict(self.kwargs)
        if render_mode:
            kwargs["render_mode"] = render_mode
        if ":" in self.factory:
            factory = _resolve(self.factory, "--env")
        else:
            factory = lambda **kw: gym.make(self.factory, **kw)  # noqa: E731
        try:
            env = factory(**kwargs)
        except gym.error.Error as err:
            raise ValueError(f"--env {self.factory!r}: not MODULE:FUNCTION and not a registered Gymnasium id "
                             f"({err})") from None
        except Exception as err:  # noqa: BLE001 - the user's factory: say which flag made the call
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no --env-set arguments"
            raise ValueError(f"--env {self.factory}: the factory failed with {shown} "
                             f"({type(err).__name__}: {err})") from None
        return _Adapter(env, self)

    def rewards_masks(self, env_rewards: np.ndarray, success: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, masks) of online transitions whose next state's success is `success` (module doc)."""
        success = np.asarray(success, bool)
        masks = (~success).astype(np.float32)
        if self.reward == "given":
            return np.asarray(env_rewards, np.float32), masks
        return np.where(success, 0.0, -1.0).astype(np.float32), masks

    def probe(self) -> "GymEnvSpec":
        """This spec with obs_dim, action_dim and episode_length read off one reset env (errors name
        the flag: a factory that fails, a non-Box action space, no time limit)."""
        import dataclasses

        env = self.make()
        try:
            obs, _ = env.reset(seed=0)
            space = env.action_space
            if not isinstance(space, gym.spaces.Box):
                raise ValueError(f"--env {self.factory}: its action space is {space}; a continuous Box is needed")
            limit = env.time_limit
        finally:
            env.close()
        return dataclasses.replace(self, obs_dim=int(obs.shape[0]), action_dim=int(np.prod(space.shape)),
                                   episode_length=int(limit))

    @classmethod
    def from_json(cls, d: dict, reward: str | None = None, obs_keys=None) -> "GymEnvSpec":
        """The spec of a run's `env` record (`config.json`; `cli.Train.env_json`), with the reward mode
        and the dict-observation key order of the run's dataset."""
        return cls(factory=d["factory"], kwargs=tuple(sorted((d.get("kwargs") or {}).items())),
                   obs_keys=tuple(obs_keys or d.get("obs_keys") or ()) or None,
                   max_episode_steps=d.get("max_episode_steps"), success=d.get("success"),
                   reward=reward or d.get("reward") or "sparse-success", end_on_success=d.get("end_on_success", True))


def parse_env_kwargs(pairs: list[str]) -> dict:
    """`--env-set KEY=VALUE` pairs; values are JSON when they parse (numbers, true, lists), else strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env-set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


class _Adapter(gym.Wrapper):
    """The user's env with flat float32 observations, `info["success"]` and the time limit."""

    def __init__(self, env, spec: GymEnvSpec):
        super().__init__(env)
        self.spec_ = spec
        space = env.observation_space
        parts = [space[k] for k in spec.obs_keys or ()] if isinstance(space, gym.spaces.Dict) else [space]
        if all(isinstance(p, gym.spaces.Box) for p in parts):
            dim = sum(int(np.prod(p.shape)) for p in parts)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self._success_fn = _resolve(spec.success, "--success") if spec.success and ":" in spec.success else None
        self._t = 0

    @property
    def time_limit(self) -> int:
        limit, env = self.spec_.max_episode_steps, self.env
        while not limit and isinstance(env, gym.Wrapper):  # a TimeLimit the factory applied
            limit = getattr(env, "_max_episode_steps", None) if isinstance(env, gym.wrappers.TimeLimit) else None
            env = env.env
        limit = limit or getattr(getattr(self.env, "spec", None), "max_episode_steps", None)
        if not limit:
            raise ValueError(f"--env {self.spec_.factory}: the env has no time limit; pass --max-episode-steps N")
        return int(limit)

    def reset(self, *, seed: int | None = None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._t = 0
        return flatten_obs(obs, self.spec_.obs_keys), self._with_success(obs, info)

    def step(self, action):
        space = self.env.action_space
        action = np.clip(np.asarray(action, np.float32).reshape(space.shape), space.low, space.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        info = self._with_success(obs, info)
        terminated = bool(terminated) or (self.spec_.end_on_success and info["success"])
        truncated = bool(truncated) or self._t >= self.time_limit
        return flatten_obs(obs, self.spec_.obs_keys), float(reward), terminated, truncated, info

    def _with_success(self, obs, info: dict) -> dict:
        if self._success_fn is not None:
            success = self._success_fn(obs, info)
        elif self.spec_.success:
            if self.spec_.success not in info:
                raise ValueError(f"--success {self.spec_.success}: the env's info has no such key (has {sorted(info)})")
            success = info[self.spec_.success]
        else:
            success = info.get("success", info.get("is_success", False))
        return {**info, "success": bool(np.any(success))}
