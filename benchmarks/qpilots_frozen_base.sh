#!/usr/bin/env bash
# QPILOTS on a frozen BC-FM base at the CPU protocol (benchmarks/results/README.md):
#   1. BC-FM with the QPILOTS velocity net (flow=qpilots), 100K steps, `--preset cpu`;
#   2. QPILOTS-U and QPILOTS-M steering that frozen base, critic (and MFM) trained 100K steps with
#      a' from the base's own sampler (steered_targets=false: nothing trained depends on α);
#   3. each evaluated on the same 50 episode seeds at α = 0 (the base itself) and the α of QP_ALPHAS
#      (default: the paper's grid 0.1, 0.2, 0.3, 0.5, 1, 2 and the finer 0.02, 0.05), and at best-of-8
#      and best-of-32 unsteered base samples ranked by the same critic (selection, not steering).
# QP_SET adds agent-config overrides to both QPILOTS runs (and names their directories), e.g.
# QP_SET=critic.num_critics=2 for the CPU protocol's two critics instead of the paper's ten.
# QP_AGENTS picks the steering agents (default both, U first). With no QP_SET the critic is the
# paper's 10-critic ensemble (directory qpilots-u-frozen-TASK-sSEED). Records (no checkpoints) are copied
# to benchmarks/results/qpilots_cpu/ as each run finishes. QP_JUDGE=1 then trains a second QPILOTS-U
# critic on the same frozen base with the same overrides (seed 100+SEED: its own initialisation and
# batches; directory qpilots-u-judge...) and runs benchmarks/qpilots_diagnostics.py with it as the judge
# of the QPILOTS-U run (diagnostics.json beside that run's records). Usage:
#   [QP_SET=critic.num_critics=2] [QP_AGENTS=qpilots-u] [QP_JUDGE=1] benchmarks/qpilots_frozen_base.sh cube-single-task2 0
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=$1 SEED=$2
BIN=.venv/bin
RUNS=runs/qpilots_cpu RESULTS=benchmarks/results/qpilots_cpu
export MUJOCO_GL=egl XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
base=$RUNS/bc-fm-$TASK-s$SEED
$BIN/steerflow train --agent bc-fm --task "$TASK" --seeds "$SEED" --preset cpu --out "$base" --resume --set flow=qpilots
QP_SET=${QP_SET:-}
tag=${QP_SET:+-${QP_SET//[^a-zA-Z0-9]/}}
copy_records() {  # the run's records, without checkpoints
  local run=$1 dst=$RESULTS/$(basename "$1")
  mkdir -p "$dst/evals"
  cp "$run"/{config.json,run_info.json,final.json,eval.csv,metrics.csv} "$dst"/
  cp "$run"/evals/*.json "$dst/evals/"
  if [ -f "$run/alpha_eval.json" ]; then cp "$run/alpha_eval.json" "$dst/"; fi
}
copy_records "$base"
for agent in ${QP_AGENTS:-qpilots-u qpilots-m}; do
  run=$RUNS/$agent-frozen$tag-$TASK-s$SEED
  $BIN/steerflow train --agent $agent --task "$TASK" --seeds "$SEED" --preset cpu --out "$run" --resume \
      --base-from "$base" --set steered_targets=false $QP_SET
  $BIN/python benchmarks/qpilots_alpha_eval.py "$run" --alphas "${QP_ALPHAS:-0,0.02,0.05,0.1,0.2,0.3,0.5,1,2}" --best-of 8,32  # evaluates only what its record lacks
  copy_records "$run"
done
if [ -n "${QP_JUDGE:-}" ]; then
  steer=$RUNS/qpilots-u-frozen$tag-$TASK-s$SEED judge=$RUNS/qpilots-u-judge$tag-$TASK-s$((100 + SEED))
  $BIN/steerflow train --agent qpilots-u --task "$TASK" --seeds $((100 + SEED)) --preset cpu --out "$judge" --resume \
      --base-from "$base" --set steered_targets=false $QP_SET
  copy_records "$judge"
  $BIN/python benchmarks/qpilots_diagnostics.py "$steer" "$judge" --out "$RESULTS/$(basename "$steer")/diagnostics.json"
fi
echo "records in $RESULTS"
