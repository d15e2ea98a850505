#!/usr/bin/env bash
# The generalist study (issue 16): a controller trained on a mix of tasks, with scale-free
# observations, evaluated by compare.py on tasks that are never in the mix.
#
#   bash experiments/generalist.sh train A B     # train arms (in parallel, JOBS at a time)
#   TIMESTEPS=48000 bash experiments/generalist.sh train C D E
#
# Training mix: MLP children (fast on a CPU), 20000 training and 2000 validation images, initial
# rate drawn per episode from {1e-2, 1e-3, 1e-4}, --preset stable. Held out (compare.py): LeNet-5,
# Fashion-MNIST with 50% label noise, a 2000-step horizon and batch 32. A stopped arm continues where
# it stopped when trained again (train.py --resume).
# Environment: DATA_DIR (default data), RUNS_DIR (default runs/generalist), JOBS (default 2),
# DEVICE (default cpu), TIMESTEPS (default 30000). Each process uses one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS_DIR:-runs/generalist}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
COMMON=(--architecture mlp --train-size 20000 --val-size 2000 --data-dir "${DATA_DIR:-data}"
        --device "${DEVICE:-cpu}" --runs-dir "$RUNS")
MIX=(--task dataset=fa-mnist,batch_size=128,num_train_steps=500
     --task dataset=mnist,batch_size=64,num_train_steps=300
     --task dataset=mnist,batch_size=256,num_train_steps=1000,label_noise=0.3
     --task dataset=fa-mnist,batch_size=128,num_train_steps=500,classes=5,image_size=14
     --task dataset=mnist,batch_size=128,num_train_steps=500,image_size=14,train_size=5000
     --task dataset=mnist,batch_size=128,num_train_steps=500,classes=5)
declare -A ARMS=(
  [A]="--features relative"            # scale-free observations, the task mix
  [B]="--features relative-progress"   # A, and the fraction of the episode done
  [R]="--features reference"           # the reference's observations, the task mix
  [C]="--features relative --hidden-lr-scale 10"                     # A, the rate's effect hidden per episode
  [D]="--features relative --hidden-lr-scale 10 --action-range 1.25"  # C, moves up to x1.25 per action
  [E]="--features relative --action-range 1.25"                       # A, moves up to x1.25 per action
  [E1]="--features relative --action-range 1.25 --seed 1"             # E, another training seed
  [E2]="--features relative --action-range 1.25 --seed 2"             # E, a third training seed
  [F]="--features relative-progress --action-range 1.5"               # B, moves up to x1.5 per action
)

# shellcheck source=experiments/arms.sh
source experiments/arms.sh

new_run_flags() {
  echo "${MIX[@]}" --num-envs 6 --initial-lr 0 --preset stable --ppo2-total-timesteps "${TIMESTEPS:-30000}" ${ARMS[$1]}
}

command=${1:-}; shift || true
arms=("$@"); [[ ${#arms[@]} -gt 0 ]] || arms=(A B)
case $command in
  train)
    in_parallel train_arm "${arms[@]}" ;;
  *)
    echo "usage: $0 train [arm ...]   (arms: ${!ARMS[*]})" >&2; exit 2 ;;
esac
