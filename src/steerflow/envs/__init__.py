"""Environments a run is evaluated and fine-tuned in.

Every environment spec (an OGBench task, `steerflow.data.tasks.TaskSpec`, or a user's Gymnasium
env, `steerflow.envs.gym_env.GymEnvSpec`) is a small picklable value with

    name, obs_dim, action_dim, episode_length        what the run and its records need
    make(render_mode=None) -> gymnasium.Env           flat float32 observations, info["success"]

so that the evaluator's worker processes (`steerflow.envs.pool.EnvPool`), the online phase
(`steerflow.train.online`) and the video writer build their envs the same way.
"""
