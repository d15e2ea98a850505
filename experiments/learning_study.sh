#!/usr/bin/env bash
# The learning study: does the controller learn, and which departures from the reference
# make it learn? Fashion-MNIST, MLP child, 500-step episodes, a smaller child setting that a CPU
# runs (batch 128, 20000 training and 2000 validation images), initial rate drawn per episode from
# {1e-2, 1e-3, 1e-4}, 40000 controller steps (100 PPO updates) per arm.
#
#   bash experiments/learning_study.sh train a b c     # train arms (in parallel, JOBS at a time)
#   bash experiments/learning_study.sh test a b c      # baselines once, then 10-seed tests per arm
#   bash experiments/learning_study.sh report          # figures and tables of every trained arm
#
# A stopped arm continues where it stopped when trained again (train.py --resume). Tests evaluate
# the policy after the last update (latest.pt): no choice made on noisy training episodes.
# Environment: DATA_DIR (default data), RUNS_DIR (default runs/learning_study), JOBS (default 2),
# DEVICE (default cpu), CHECKPOINT (default latest). Each process uses one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS_DIR:-runs/learning_study}
JOBS=${JOBS:-2}
CHECKPOINT=${CHECKPOINT:-latest}
export OMP_NUM_THREADS=1
COMMON=(--dataset fa-mnist --architecture mlp --num-train-steps 500 --batch-size 128 --val-size 2000
        --train-size 20000 --data-dir "${DATA_DIR:-data}" --device "${DEVICE:-cpu}" --runs-dir "$RUNS")
TRUST="--ppo2-cliprange 0.2 --norm-clip 10 --ppo2-ent-coef 0.01"
declare -A ARMS=(
  [a]=""                                                        # the reference's defaults
  [b]="--action-param log"                                      # a = 0 keeps the rate
  [c]="--action-param log $TRUST"                               # b, trust region, little entropy bonus
  [d]="--action-param log $TRUST --reward log-improvement"      # c (the more stable of b/c), scale-free reward
  [e]="--discrete 1 $TRUST --reward log-improvement"            # discrete actions, d's settings
)

# shellcheck source=experiments/arms.sh
source experiments/arms.sh

new_run_flags() {
  echo --initial-lr 0 --ppo2-total-timesteps 40000 ${ARMS[$1]}
}

test_arm() {
  local id; id=$(run_id "$1")
  for mode in 1 0; do
    python test.py "${COMMON[@]}" --test-id "$id" --test-schedule "$CHECKPOINT" --test-deterministic "$mode" \
      > "$RUNS/logs/test-$1-$CHECKPOINT-det$mode.log" 2>&1
  done
  echo "arm $1 tested: $id"
}

command=${1:-}; shift || true
arms=("$@"); [[ ${#arms[@]} -gt 0 ]] || arms=(a b c d e)
case $command in
  train)
    in_parallel train_arm "${arms[@]}" ;;
  test)
    python baselines.py "${COMMON[@]}" --num-envs 4 > "$RUNS/logs/baselines.log" 2>&1
    in_parallel test_arm "${arms[@]}" ;;
  report)
    python experiments/study_report.py "$RUNS" --checkpoint "$CHECKPOINT" --out experiments/results/learning_study ;;
  *)
    echo "usage: $0 train|test|report [arm ...]   (arms: ${!ARMS[*]})" >&2; exit 2 ;;
esac
