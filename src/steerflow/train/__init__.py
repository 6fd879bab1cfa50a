"""Training, generic over the agent contract (`agents.common`).

Per host call the trainer runs `updates_per_call` jitted updates in a `lax.scan`, with batches
sampled on the device from the valid-start chunk sampler; the seeds of a run are `vmap`ped in
one process (`parallel="vmap"`, the GPU lever) or run as one single-threaded process per core
(`parallel="processes"`, measured faster on a 2-core CPU). A run directory holds:

    config.json      resolved agent + training config, preset and overrides
    run_info.json    git commit, library versions, device, dataset fingerprint
    metrics.csv      step, seed, losses, steps/s (one row per seed per log point)
    evals/step_XXXXXXXX.json, eval.csv    success per seed at each evaluation point
    checkpoints/latest.msgpack            all seeds' agent states + sampler keys (atomic)
    normalization.json  observation/action statistics the policy acts in (identity for OGBench;
                     `data.normalization`)
    final.json       the last evaluation: agent, task, preset, steps, seeds, final_success, mean
    video/           step_XXXXXXXX_ep{i}_{success|failure}.mp4 (`video_every`, `steerflow eval --video`)
    failed.json      only when the losses became non-finite: step, losses (`report` lists the run
                     as failed and leaves it out); the last good checkpoint stays
    tensorboard/     `--log tensorboard`: event files, each metrics row and evaluation as written
    wandb/           `--log wandb`: the W&B run (offline by default), its id in wandb/run_id
                     (`steerflow.tracking`)

`check_run` validates a run (task, preset, overrides, agent config values via an abstract
`init`) before any data is loaded or anything is written. `--resume` refuses settings that differ
from the stored ones, except a larger step count, which extends the run. SIGINT/SIGTERM stop the
loop after its current host call with a checkpoint at that step (resuming from it ends
bit-identical to an uninterrupted run); see `steerflow.errors`.

Modules: `presets` (presets, TrainConfig, RunSpec, validation), `core` (the jitted update call),
`checkpoint`, `evaluation`, `metrics`, `loop` (the run), `processes` (per-seed processes and the
command runner). Every name is re-exported here.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .core import make_finite_tracker, make_policy, make_train_call
from .evaluation import evaluate_run, evaluate_states, record_run, restore_run
from .loop import train
from .metrics import MetricsLog
from .presets import (PRESETS, RunSpec, TrainConfig, check_run, check_train_config, from_spec, has_field, resolve,
                      resume_spec)
from .processes import (SINGLE_THREAD_XLA_FLAGS, free_core, gather_final, pinned_to,
                        run_commands, single_thread_env, train_command, train_processes)

__all__ = ["PRESETS", "MetricsLog", "RunSpec", "SINGLE_THREAD_XLA_FLAGS", "TrainConfig", "check_run",
           "check_train_config", "evaluate_run", "evaluate_states", "free_core", "from_spec", "gather_final", "has_field",
           "load_checkpoint", "make_finite_tracker", "make_policy", "make_train_call", "pinned_to",
           "record_run", "resolve", "restore_run", "resume_spec", "run_commands", "save_checkpoint", "single_thread_env", "train",
           "train_command", "train_processes"]
