#!/usr/bin/env bash
# docs/results/privacy.md: accuracy against epsilon under client-level DP (central mode) on the paper's
# CIFAR-10 10-client setting (configs/paper/cifar10_n10.yaml: 20 rounds, all 10 clients every round).
#   tune: clip_norm in {0.001, 0.01, 0.1, 1, 10} per algorithm on the validation split
#         (dataset.validation_fraction=0.2, the test split is never read) at target epsilon 10: 5 runs per
#         algorithm (the grid began as {0.1, 1, 10}; 0.01, then 0.001, were added for every algorithm when
#         pFedLoRA's, then FML's, best was at the lower edge);
#   test: the chosen clip norm at target epsilon 1, 3, 10, 30, 100, plus the no-DP run, on the test split.
# Usage: scripts/privacy_experiments.sh tune|test [algorithms...]   (CLIP_<algorithm>=value for test)
# Every run is a `pfedlora compare` directory, so a finished run is reused and an interrupted one resumes.
set -euo pipefail
PHASE=${1:?tune or test}; shift
ALGORITHMS=${*:-pfedlora lg_fedavg}
OUT=${OUT:-docs/results/privacy}
PFEDLORA=${PFEDLORA:-pfedlora}
CONFIG=configs/paper/cifar10_n10.yaml
COMMON=(--config "$CONFIG" --seeds 0 --set engine.workers=1 --set checkpoint_every=0)
for algorithm in $ALGORITHMS; do
  if [ "$PHASE" = tune ]; then
    for clip in 0.001 0.01 0.1 1 10; do
      $PFEDLORA compare "${COMMON[@]}" --algorithms "$algorithm" --set dataset.validation_fraction=0.2 \
        --set privacy.mode=central --set privacy.target_epsilon=10 --set privacy.clip_norm=$clip \
        --out "$OUT/tuning/$algorithm/clip=$clip"
    done
  else
    clip_var="CLIP_$algorithm"; clip=${!clip_var:?set $clip_var to the tuned clip norm}
    $PFEDLORA compare "${COMMON[@]}" --algorithms "$algorithm" --out "$OUT/test/$algorithm/no-dp"
    for epsilon in 1 3 10 30 100; do
      $PFEDLORA compare "${COMMON[@]}" --algorithms "$algorithm" \
        --set privacy.mode=central --set privacy.target_epsilon=$epsilon --set privacy.clip_norm=$clip \
        --out "$OUT/test/$algorithm/epsilon=$epsilon"
    done
  fi
done
