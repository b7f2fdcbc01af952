#!/usr/bin/env bash
# The 20-client HtFE-img-8 measurement of docs/results/model-families.md (issue #39): CIFAR-10, the
# map's setting (configs/map/cifar10_n20.yaml: pathological 2 classes per client, 50 images per client,
# batch 64, each algorithm at its map-tuned values) with HtFLlib's HtFE-img-8 family instead of CNN-1..5;
# Standalone, pFedLoRA and the map's best (FedProto) and worst (FedMRL) algorithms, one seed, ROUNDS rounds.
# Each algorithm runs in its own process under /usr/bin/time -v (peak memory: time-<algorithm>.txt); the
# last compare reuses the finished runs and writes the table. Run from the repository root:
#   nice -n 10 bash scripts/model_families.sh [ROUNDS]
set -euo pipefail
ROUNDS=${1:-15}
OUT=docs/results/model-families/htfe-img-8
PFEDLORA=${PFEDLORA:-.venv/bin/pfedlora}
ALGORITHMS=(standalone fedproto fedmrl pfedlora)
# the map's tuned learning rates (scripts/federation_map.sh, TUNED_LR); the others keep train.lr 0.01
TUNED_LR=(--set-for standalone:train.lr=0.02 --set-for pfedlora:train.lr=0.02)
SETS=(--config configs/map/cifar10_n20.yaml --set model_pool=null --set model_family=HtFE-img-8
      --set rounds="$ROUNDS" --set dataset.max_train_samples=1000 --set dataset.max_test_samples=1000
      --seeds 0 "${TUNED_LR[@]}")
mkdir -p "$OUT"
uptime | tee "$OUT/load-start.txt"
for algorithm in "${ALGORITHMS[@]}"; do
  /usr/bin/time -v -o "$OUT/time-$algorithm.txt" "$PFEDLORA" compare "${SETS[@]}" --algorithms "$algorithm" \
    --out "$OUT" --jobs 1
  uptime | tee "$OUT/load-after-$algorithm.txt"
done
"$PFEDLORA" compare "${SETS[@]}" --algorithms "$(IFS=,; echo "${ALGORITHMS[*]}")" --out "$OUT" --jobs 1
