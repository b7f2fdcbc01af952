#!/usr/bin/env bash
# The paper's own budget (Yi et al., arXiv 2310.13283, section 5): the full training sets, 500 rounds,
# N in {10, 50, 100} (all, 20% and 10% of the clients per round), CNN-1..5, pathological non-IID,
# CIFAR-10 (2 classes per client) and CIFAR-100 (10 classes per client), every algorithm, seed 0.
# For a machine with a GPU: device auto, one engine worker (CUDA does not mix with forked workers).
# A 2-core CPU would need weeks for this; see docs/results/cifar10.md for what it can run.
# Finished runs are reused and interrupted ones continue from their last checkpoint, so the script can
# simply be run again after a stop.
#   bash scripts/paper_full_budget.sh [cifar10|cifar100|all] [N ...]
# Environment: CIFAR10 (default ../shared/data/cifar10-jpeg.tar.gz), CIFAR100 (a cifar-100-python
# directory or .tar.gz; fetched into it when missing, if the machine can reach the internet),
# OUT (default runs/paper-full-budget), ROUNDS (default 500), SEEDS (default 0).
set -euo pipefail
DATASETS=${1:-all}; shift || true
SIZES=("$@"); [ ${#SIZES[@]} -eq 0 ] && SIZES=(10 50 100)
OUT=${OUT:-runs/paper-full-budget}
ROUNDS=${ROUNDS:-500}
SEEDS=${SEEDS:-0}
CIFAR10=${CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}
CIFAR100=${CIFAR100:-data/cifar-100-python.tar.gz}
PFEDLORA=${PFEDLORA:-pfedlora}

full_budget() {  # dataset N extra-overrides...
  local dataset=$1 n=$2; shift 2
  local start=$SECONDS
  $PFEDLORA compare --config "configs/paper/cifar10_n$n.yaml" --algorithms all --seeds "$SEEDS" \
    --set rounds="$ROUNDS" --set dataset.max_train_samples=null --set dataset.max_test_samples=null \
    --set device=auto --set engine.workers=1 --set checkpoint_every=10 --set eval_every=10 \
    "$@" --out "$OUT/$dataset/n$n"
  echo "$dataset N=$n: $((SECONDS - start)) s"
}

for n in "${SIZES[@]}"; do
  if [ "$DATASETS" = cifar10 ] || [ "$DATASETS" = all ]; then
    full_budget cifar10 "$n" --set dataset.path="$CIFAR10"
  fi
  if [ "$DATASETS" = cifar100 ] || [ "$DATASETS" = all ]; then
    full_budget cifar100 "$n" --set dataset.name=cifar100 --set dataset.path="$CIFAR100" \
      --set dataset.download=true --set partition.classes_per_client=10
  fi
done
