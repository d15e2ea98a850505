# Sourced by the study scripts: an arm's experiment folder, training an arm (or resuming it where it
# stopped), and running arms side by side. The script sets RUNS, COMMON and JOBS and defines
# new_run_flags ARM, the train.py flags of a new run of that arm (no spaces inside a value).

run_id() {  # the experiment folder of an arm, if it was started
  { ls -d "$RUNS"/*_"arm-$1" 2>/dev/null || true; } | head -n1 | xargs -r basename
}

train_arm() {
  local id; id=$(run_id "$1")
  mkdir -p "$RUNS/logs"
  if [[ -n $id ]]; then
    python train.py "${COMMON[@]}" --resume "$id"
  else
    local flags; flags=$(new_run_flags "$1") || return 1
    # shellcheck disable=SC2086
    python train.py "${COMMON[@]}" $flags --tb-suffix "arm-$1"
  fi > "$RUNS/logs/train-$1.log" 2>&1
  echo "arm $1 trained: $(run_id "$1")"
}

in_parallel() {  # run "$1 ARM" for each remaining argument, JOBS at a time
  local job=$1; shift
  for arm in "$@"; do
    "$job" "$arm" &
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
  done
  wait
}
