#!/usr/bin/env bash
# A CPU-sized real experiment: Fashion-MNIST, MLP child, 200-step episodes (the paper uses 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON="--dataset fa-mnist --architecture mlp --num-train-steps 200 --data-dir ${DATA_DIR:-data} --device ${DEVICE:-auto}"
python baselines.py $COMMON
python train.py $COMMON --ppo2-total-timesteps 8000 --tb-suffix cpu200 | tee /tmp/alrs_train.log
ID=$(grep -m1 -o 'experiment id: \S*' /tmp/alrs_train.log | cut -d' ' -f3)
python test.py $COMMON --test-id "$ID"
