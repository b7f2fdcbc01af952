#!/usr/bin/env bash
# Issue #8 tuning: every algorithm's main knob, 3 values, on a validation split carved from the
# training data (dataset.validation_fraction=0.2: 20% of each client's ~500 training images; the
# test split is never read). Setting: configs/paper/cifar10_n10.yaml, seed 0, its full 20 rounds.
# Standalone and LG-FedAvg have no federated knob and run with their defaults.
# The chosen values (highest final validation accuracy) go into configs/paper/*.yaml.
set -euo pipefail
OUT=${OUT:-docs/results/cifar10/tuning}
PFEDLORA=${PFEDLORA:-pfedlora}
tune() {  # algorithm key values...
  local algorithm=$1 key=$2; shift 2
  for value in "$@"; do
    $PFEDLORA compare --config configs/paper/cifar10_n10.yaml --algorithms "$algorithm" --seeds 0 \
      --set dataset.validation_fraction=0.2 --set "$key=$value" \
      --out "$OUT/$algorithm/$key=$value"
  done
}
tune pfedlora adapter.mu 0.3 0.5 0.7
tune fd fd.gamma 0.3 1 3
tune fedproto fedproto.lam 0.1 1 10
tune fml fml.alpha 0.3 0.5 0.7
tune fedkd fedkd.temperature 1 2 4
tune fedgh fedgh.server_lr 0.001 0.01 0.1
