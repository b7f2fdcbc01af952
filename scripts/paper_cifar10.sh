#!/usr/bin/env bash
# Issue #8: the paper's CIFAR-10 comparison at a CPU budget (configs/paper/*.yaml hold the values
# chosen by scripts/paper_tuning.sh). Every algorithm (FedAvg is skipped: the pool is heterogeneous).
set -euo pipefail
OUT=${OUT:-docs/results/cifar10}
PFEDLORA=${PFEDLORA:-pfedlora}
timed() { local start=$SECONDS; "$@"; echo "wall: $((SECONDS - start)) s: $*"; }
timed $PFEDLORA compare --config configs/paper/cifar10_n10.yaml --algorithms all --seeds 0,1,2 --out "$OUT/n10"
timed $PFEDLORA compare --config configs/paper/cifar10_n50.yaml --algorithms all --seeds 0 --out "$OUT/n50"
timed $PFEDLORA compare --config configs/paper/cifar10_n100.yaml --algorithms all --seeds 0 --out "$OUT/n100"
