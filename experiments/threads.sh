#!/usr/bin/env bash
# Torch threads per process on a CPU: the wall time of a short train.py run of the CPU
# quick-start setting, one process alone and two side by side, each with 1 or 2 torch threads
# (OMP_NUM_THREADS), plus the reference's LeNet-5 setting alone. Prints one line per case.
#
#   DATA_DIR=data bash experiments/threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
QUICK=(--architecture mlp --num-train-steps 500 --batch-size 128 --val-size 2000 --train-size 20000 --initial-lr 0
       --preset stable --ppo2-total-timesteps 400)   # one PPO update: 400 controller steps
LENET=(--architecture cnn --ppo2-update-freq 5 --ppo2-total-timesteps 20)   # 20 controller steps, batch 1000
COMMON=(--dataset fa-mnist --device cpu --data-dir "${DATA_DIR:-data}" --runs-dir "$RUNS")

case_time() {  # label, threads, processes, setting...: wall seconds until every process is done
  local label=$1 threads=$2 processes=$3 start; shift 3
  start=$(date +%s.%N)
  for _ in $(seq "$processes"); do
    OMP_NUM_THREADS=$threads python train.py "${COMMON[@]}" "$@" > /dev/null 2>&1 &
  done
  wait
  printf '%-34s %6.1f s\n' "$label" "$(echo "$(date +%s.%N) - $start" | bc)"
}

for threads in 1 2; do
  case_time "quick start, 1 process x $threads thread(s)" "$threads" 1 "${QUICK[@]}"
  case_time "quick start, 2 processes x $threads thread(s)" "$threads" 2 "${QUICK[@]}"
  case_time "reference LeNet-5, 1 process x $threads thread(s)" "$threads" 1 "${LENET[@]}"
done
