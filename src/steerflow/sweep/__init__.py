"""`steerflow sweep`: a grid of independent, resumable run units.

A sweep expands agents × tasks × the cartesian product of the `--grid` values into *units*. A unit
is one configuration (agent, task, agent overrides, training overrides) with its seeds, trained by
one process into its own directory `DIR/runs/<id>`: in a sweep, `steerflow train --seeds ...
--parallel vmap` with all the sweep's seeds. The studies under `benchmarks/` submit units through
the same runner and backends, one seed per unit where they commit seed by seed. Units share
nothing but the cached dataset (whose generation is safe to race), so each unit is an independent
job whose state lives in its run directory alone:

* `done`: `final.json` holds the unit's step count and seeds (skipped);
* `running`: another live process holds its run lock (left to it, named);
* `partial`: `checkpoints/latest.msgpack` exists (resumed with `--resume`);
* `pending`: none of these.

So a killed sweep is continued by running the same command again, and nothing needs a scheduler
process that stays alive; two drivers on one directory share the work instead of racing for it
(each manifest write holds `DIR/.manifest.lock`). `DIR/manifest.json` records the sweep arguments
and every unit with the exact `steerflow train` command that runs it (that command carries
`--resume`, which continues a partial run and starts an empty one afresh). Running the same sweep
again is idempotent; another grid into the same DIR adds its units to the manifest and removes none.

Execution (`--backend`, `steerflow.backends`): the local runner starts `--jobs N` unit processes at
a time (one CPU thread each when N > 1), logs to `DIR/logs/<id>.log`; `ray` runs each unit as a Ray
task and `slurm` the sweep as one submitit job array, with `--runs-root` holding the run directories
and logs on storage every node sees. Whatever the backend, the driver records in the manifest's
`state` when each unit is submitted and how it ended (`--dry-run` shows it). A cluster can also run
one unit per job by hand: `--print-commands` prints one `steerflow sweep --out DIR --unit ID` line
per unfinished unit, and such a line reads its unit from the manifest and trains it in the
foreground (skipping it if done, resuming it if partial).

Grid values are scalars (comma-separated); tuple-valued fields such as `*.hidden` can be set for
all units with `--set` but not gridded. Keys may be scoped to one agent: `lps:alpha=1,3,10`.

Modules: `grid` (units and their expansion), `manifest` (the manifest and each unit's status),
`runner` (one unit, the local runner, the backends' progress), `command` (`SweepOptions`, checked
once, and `run`, the command).
"""

from .command import SweepOptions, main, run
from .grid import Unit, expand, split_list, unit_id
from .manifest import (
    STATUSES,
    load_manifest,
    manifest_path,
    merge_manifest,
    read_final,
    record_state,
    status_table,
    sweep_args,
    unit_command,
    unit_status,
)
from .runner import Progress, run_backend, run_unit, run_units

__all__ = ["STATUSES", "Progress", "SweepOptions", "Unit", "expand", "load_manifest", "main", "manifest_path",
           "merge_manifest", "read_final", "record_state", "run", "run_backend", "run_unit", "run_units",
           "split_list", "status_table", "sweep_args", "unit_command", "unit_id", "unit_status"]
