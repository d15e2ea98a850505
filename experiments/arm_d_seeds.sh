#!/usr/bin/env bash
# Arm d of the learning study (--preset stable) from two more training seeds, tested like arm d: the
# policy after the last update, its mode, 10 test seeds at --seed 0 (the same test children, and the
# same baseline sweep, as arm d's own test). Run `learning_study.sh test d` first for the baselines.
#
#   DATA_DIR=data RUNS_DIR=runs/learning_study bash experiments/arm_d_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS_DIR:-runs/learning_study}
export OMP_NUM_THREADS=1
COMMON=(--dataset fa-mnist --architecture mlp --num-train-steps 500 --batch-size 128 --val-size 2000
        --train-size 20000 --data-dir "${DATA_DIR:-data}" --device "${DEVICE:-cpu}" --runs-dir "$RUNS")
mkdir -p "$RUNS/logs"
for seed in 1 2; do
  python train.py "${COMMON[@]}" --initial-lr 0 --ppo2-total-timesteps 40000 --preset stable --seed "$seed" \
    --tb-suffix "arm-d-seed$seed" > "$RUNS/logs/train-d-seed$seed.log" 2>&1 &
done
wait
for seed in 1 2; do
  id=$(ls -d "$RUNS"/*_"arm-d-seed$seed" | head -n1 | xargs basename)
  python test.py "${COMMON[@]}" --test-id "$id" --test-schedule latest --test-deterministic 1 --seed 0 \
    > "$RUNS/logs/test-d-seed$seed-latest-det1.log" 2>&1 &
done
wait
