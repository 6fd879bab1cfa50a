#!/usr/bin/env bash
# Issue 3 evidence on the 2-core CPU: every agent on cube-single tasks 1-5, the alpha-sensitivity
# study and the LPS ablations on task2. Resumable: re-running skips finished units and resumes
# partial ones. Budget (see benchmarks/README.md "baselines"): the cpu preset's nets and batch,
# 5K steps instead of 15K, because the full cpu preset for 8+ agents does not fit one session.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl
SF=".venv/bin/steerflow"
OUT=${OUT:-runs/baselines_cpu}
# issue 3's budget, pinned: the cpu preset has since become the 100K-step protocol (benchmarks/protocol)
TS=(--train-set steps=5000 eval_every=5000 checkpoint_every=2500 dataset_episodes=1000)

# 1. main table: all agents x cube-single tasks 1-5 x 3 seeds (one sweep call per task, so an
#    interrupted session leaves complete task columns)
for t in 1 2 3 4 5; do
  $SF sweep --out "$OUT/main" --agents bc-mf,bc-fm,lps,lpsd,qc-fql,qc-mfql,dsrl-na,cfgrl \
    --tasks cube-single-task$t --seeds 0,1,2 --preset cpu "${TS[@]}" --jobs 2
done
# 2. alpha sensitivity (paper §V-C) on task2, seeds 0,1. α=1 is the default of LPS and DSRL-NA
#    (their base loss unweighted), so those points come from the main table's task2 units.
$SF sweep --out "$OUT/alpha" --agents qc-mfql,lps,dsrl-na --tasks cube-single-task2 --seeds 0,1 --preset cpu "${TS[@]}" \
  --grid qc-mfql:alpha=1,10,100,1000 lps:alpha=10,100,1000 dsrl-na:alpha=10,1000 --jobs 2
# 3. ablations on task2, seeds 0,1 (reference: the main table's lps task2 unit), and DSRL-NA's
#    original variant
$SF sweep --out "$OUT/ablations" --agents lps --tasks cube-single-task2 --seeds 0,1 --preset cpu "${TS[@]}" \
  --grid geometry=normal,truncated --jobs 2
$SF sweep --out "$OUT/ablations" --agents lps --tasks cube-single-task2 --seeds 0,1 --preset cpu "${TS[@]}" \
  --grid decoder=fm-bptt,fm-1step --jobs 2
$SF sweep --out "$OUT/ablations" --agents lps,dsrl-na-sac --tasks cube-single-task2 --seeds 0,1 --preset cpu "${TS[@]}" \
  --grid lps:base.parameterisation=displacement --jobs 2
# 4. if time remains: the half-decades of alpha
$SF sweep --out "$OUT/alpha" --agents qc-mfql,lps,dsrl-na --tasks cube-single-task2 --seeds 0,1 --preset cpu "${TS[@]}" \
  --grid alpha=3,30,300 --jobs 2
