#!/usr/bin/env bash
# The tuning-free study: controllers trained on the family of random classifiers (tasks.family_task),
# evaluated by compare.py on held-out tasks: the generalist study's eight and family instances whose
# seeds no training run can draw (experiments/family_held_out.py prints them and how they were chosen).
#
#   bash experiments/tuning_free.sh train H I        # train arms (in parallel, JOBS at a time; resumes)
#   bash experiments/tuning_free.sh compare baselines H   # compare.py on the held-out family instances
#   bash experiments/tuning_free.sh compare wide-grid     # cosine and schedule-free AdamW from 3e-2 and 1e-1 too
#   bash experiments/tuning_free.sh report                # every job's runs: compare.py's report and the bar
#   bash experiments/tuning_free.sh train H-seed1 H-seed2 # an arm from other training seeds (own tasks drawn)
#
# Every arm: 6 environments, each drawing a new family task every episode (random classifier or the
# MLP, Adam/AdamW/SGD/schedule-free AdamW as the arm says, batch 16-512, 300-3000 steps, 10-100% of
# 20000 images, dataset variants), initial rate drawn from {1e-2, 1e-3, 1e-4}, arm F's settings of
# the generalist study (relative-progress observations, x1.5 actions, --preset stable).
# Environment: DATA_DIR (default data), RUNS_DIR (default runs/tuning-free), JOBS (default 2),
# DEVICE (default cpu), TIMESTEPS (default 30000), LRS (start rates of the compare rows; default
# 1e-2 1e-3 1e-4), SEEDS (compare.py seeds; default 3), EXCLUDE (held-out seeds left out of compare
# and report, e.g. "2 12 16 18 19 21", the six costliest on a CPU). Each process uses one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS_DIR:-runs/tuning-free}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
COMMON=(--data-dir "${DATA_DIR:-data}" --device "${DEVICE:-cpu}" --runs-dir "$RUNS")
F=(--features relative-progress --action-range 1.5)
ALL=adam,adamw,sgd,schedulefree
G_FINAL=experiments/results/tuning_free/runs/family6_continuous_20261204-042228_arm-G/checkpoints/step-0030000_val-0.3687.pt
G_SEED2_FINAL=experiments/results/tuning_free/runs/family6_continuous_20261204-182219_arm-G-seed2/checkpoints/step-0030000_val-0.4346.pt
declare -A ARMS=(
  [G]="--family-optimizers adam"                          # the family, Adam only
  [H]="--family-optimizers $ALL"                          # the family, every optimizer
  [I]="--family-optimizers $ALL --anchor cosine"          # H, actions correct a cosine schedule
  [J]="--family-optimizers schedulefree"                  # the better of H and I (H), schedule-free AdamW's rate only
  [K]="--family-optimizers adam --anchor cosine"          # G, actions correct a cosine schedule (I's anchor on G's mix)
  [L]="--family-optimizers adam,adamw"                    # G with AdamW too: the optimizers that share Adam's rate scale
  [M]="--family-optimizers adam --family-members mlp,cnn" # G with LeNet-5 a fixed member too (ResNet-18 needs a GPU)
  [N]="--family-optimizers adam --init-controller $G_FINAL --seed 100" # G trained 30000 steps longer, on new draws
  [O]="--family-optimizers adam --init-controller $G_SEED2_FINAL --seed 102" # N's replication: G-seed2 trained longer
  [P]="--family-optimizers adam --features relative-progress-no-log-lr" # G, the absolute rate not observed (replaces F's)
)
# arms compared on the held-out seeds drawn with one optimizer only (the one they trained with)
declare -A CHILD_OPTIMIZER=([J]=schedulefree)

# shellcheck source=experiments/arms.sh
source experiments/arms.sh

arm_of() {  # the arm of a job name: H of H or of H-seed1 (arm H from training seed 1)
  echo "${1%-seed*}"
}

new_run_flags() {  # ARM, or ARM-seedN: that arm from training seed N (its environments draw other tasks)
  local arm; arm=$(arm_of "$1")
  [[ -n ${ARMS[$arm]:-} ]] || { echo "no arm $arm (arms: ${!ARMS[*]})" >&2; return 1; }
  echo --num-envs 6 --family 6 --initial-lr 0 --preset stable --ppo2-total-timesteps "${TIMESTEPS:-30000}" \
    "${F[@]}" ${ARMS[$arm]} $([[ $1 == *-seed* ]] && echo --seed "${1##*-seed}")
}

held_out_tasks() {  # compare.py's --task flags of the held-out family instances, less EXCLUDE's seeds;
  # with $1, each drawn with that optimizer only (family_held_out.py --optimizer)
  local excluded=${EXCLUDE:-}
  python experiments/family_held_out.py --flags ${1:+--optimizer "$1"} | tr ' ' '\n' | paste -d' ' - - |
    { grep -vE -- "--task family=(${excluded// /|})(,|$)" || true; } | tr '\n' ' '
}

policy_of() {  # a run's policy: latest.pt, or the last step checkpoint where a finished run left latest.pt out
  local dir=$RUNS/$1/checkpoints
  if [[ -f $dir/latest.pt ]]; then echo "$dir/latest.pt"; else ls "$dir"/step-*.pt | sort | tail -n1; fi
}

compare_job() {  # compare.py's runs of one job (an arm, or the baselines) in a folder of its own
  local out=$RUNS/compare/$1
  mkdir -p "$out" "$RUNS/controllers" "$RUNS/logs"
  local optimizer=${CHILD_OPTIMIZER[$(arm_of "$1")]:-} tasks
  tasks=$(held_out_tasks "$optimizer")
  if [[ $1 == baselines ]]; then
    compare "$out" $tasks --methods constant cosine onecycle plateau schedulefree --lrs 1e-2 1e-3 1e-4
    compare "$out" $tasks --methods schedulefree --lrs 2.5e-3   # its default rate
    compare "$out" $tasks --methods prodigy
  elif [[ $1 == wide-grid ]]; then  # the grid's top: is the best-of-grid cosine's best start its highest?
    compare "$out" $tasks --methods cosine schedulefree --lrs 3e-2 1e-1
  else
    local id; id=$(run_id "$1")
    [[ -n $id ]] || { echo "arm $1 was not trained" >&2; return 1; }
    cp "$(policy_of "$id")" "$RUNS/controllers/tuning-free-$1.pt"
    # on an arm's own children, their optimizer at fixed rates is the rival (2.5e-3: schedule-free AdamW's default)
    # shellcheck disable=SC2086
    [[ -n $optimizer ]] && compare "$out" $tasks --methods constant --lrs 2.5e-3 1e-2 1e-3 1e-4
    # shellcheck disable=SC2086
    compare "$out" $tasks --controller "$RUNS/controllers/tuning-free-$1.pt" --methods replay pooled_replay \
      --lrs ${LRS:-1e-2 1e-3 1e-4}
  fi > "$RUNS/logs/compare-$1.log" 2>&1
  echo "$1 compared on the held-out family instances"
}

compare() {  # compare.py: compare OUT FLAGS...
  local out=$1; shift
  python compare.py --data-dir "${DATA_DIR:-data}" --device "${DEVICE:-cpu}" --seeds "${SEEDS:-3}" --out "$out" "$@"
}

report() {  # every job's runs in one runs.jsonl, compare.py's report of them, and the bar's table
  local all=$RUNS/compare/all tasks
  mkdir -p "$all"
  cat "$RUNS"/compare/*/runs.jsonl | grep -v '^$' | sort -u > "$all/runs.jsonl.new"
  mv "$all/runs.jsonl.new" "$all/runs.jsonl"
  tasks=$(held_out_tasks)
  for arm in "${!CHILD_OPTIMIZER[@]}"; do  # an arm's own children, once it was compared on them
    [[ -d $RUNS/compare/$arm ]] && tasks+=" $(held_out_tasks "${CHILD_OPTIMIZER[$arm]}")"
  done
  # shellcheck disable=SC2086
  compare "$all" $tasks --methods constant --lrs 1e-3 > /dev/null
  python experiments/tuning_free_table.py "$all/runs.jsonl" > "$all/bar.md"
  cat "$all/bar.md"
}

command=${1:-}; shift || true
case $command in
  train) for arm in "$@"; do new_run_flags "$arm" > /dev/null; done; in_parallel train_arm "$@" ;;
  compare) in_parallel compare_job "$@" ;;
  report) report ;;
  *) echo "usage: $0 train [arm ...] | compare [baselines] [arm ...] | report   (arms: ${!ARMS[*]})" >&2; exit 2 ;;
esac
