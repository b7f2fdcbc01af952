#!/usr/bin/env bash
# Issue #29: pFedLoRA on the test split of the 20-round tuned setting (configs/paper/cifar10_n10_tuned.yaml,
# lr 0.02, 3 seeds) with the adapter-activity columns: the tuned configuration of docs/results/cifar10.md
# ("n10-tuned", re-measured) and the active configuration found by scripts/search_pfedlora_adapter.sh.
#   bash scripts/pfedlora_activity_test_split.sh [tuned|active ...]
set -euo pipefail
OUT=${OUT:-docs/results/cifar10}
PFEDLORA=${PFEDLORA:-pfedlora}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
for which in "${@:-tuned active}"; do
  for what in $which; do
    sets=(--set dataset.path="$DATA" --set train.lr=0.02)
    [ "$what" = active ] && sets+=(--set adapter.lr_scale=10 --set adapter.weight_decay=0)
    start=$SECONDS load=$(cut -d' ' -f1 /proc/loadavg)
    $PFEDLORA compare --config configs/paper/cifar10_n10_tuned.yaml --algorithms pfedlora --seeds 0,1,2 \
      "${sets[@]}" --out "$OUT/n10-tuned-pfedlora-$what" > /dev/null
    echo "$what: $((SECONDS - start)) s for 3 seeds (load $load at start, $(cut -d' ' -f1 /proc/loadavg) at end)"
  done
done
