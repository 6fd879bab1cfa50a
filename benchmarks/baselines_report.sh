#!/usr/bin/env bash
# Tables and figures of issue 3 from the run directories of benchmarks/baselines_cpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/baselines_cpu}
RES=benchmarks/results/baselines_cpu
SF=".venv/bin/steerflow"
# every agent, cube-single tasks 1-5
$SF report "$OUT/main" --out "$RES/main"
# ablations on task2 next to the reference units of the main table (LPS defaults, DSRL-NA, BC-MF)
$SF report "$OUT/ablations" "$OUT/main/runs/lps__cube-single-task2__default" \
  "$OUT/main/runs/dsrl-na__cube-single-task2__default" --out "$RES/ablations"
# alpha sensitivity
$SF report "$OUT/alpha" --out "$RES/alpha"
M="$OUT/main/runs"
.venv/bin/python benchmarks/alpha_plot.py "$OUT/alpha" "$M/lps__cube-single-task2__default" \
  "$M/dsrl-na__cube-single-task2__default" "$M/qc-mfql__cube-single-task2__default" --out "$RES/alpha_sensitivity"
