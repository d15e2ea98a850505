#!/usr/bin/env bash
# A CPU-sized real experiment: Fashion-MNIST, MLP child, 200-step episodes (the paper uses 1000),
# 8000 controller steps. Extra arguments go to train.py and test.py (e.g. --discrete 1).
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON="--dataset fa-mnist --architecture mlp --num-train-steps 200 --data-dir ${DATA_DIR:-data} --device ${DEVICE:-auto}"
python baselines.py $COMMON
log=$(mktemp)
python train.py $COMMON --ppo2-total-timesteps 8000 --tb-suffix cpu200 "$@" | tee "$log"
ID=$(grep -m1 -o 'experiment id: \S*' "$log" | cut -d' ' -f3)
python test.py $COMMON --test-id "$ID" "$@"
