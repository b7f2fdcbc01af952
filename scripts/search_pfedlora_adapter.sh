#!/usr/bin/env bash
# Issue #29, item 2: a search for a pFedLoRA adapter that stays active (adapter_share and
# adapter_flips clearly above zero at the end), on the validation split of the tuning setting of
# scripts/tune_cifar10_validation.sh: configs/paper/cifar10_n10_tuned.yaml (10 clients, CNN-1..5,
# 5,000-image subset, ~500 images per client, 20 rounds, seed 0) with dataset.validation_fraction=0.2
# and pFedLoRA's tuned lr 0.02. The same budget as every other algorithm's tuning: 6 runs.
# "reference" re-measures the configuration tuned so far (tuning-v2-supplementary, 78.13) with the
# activity columns; it is not one of the 6.
# Finished runs are reused.   bash scripts/search_pfedlora_adapter.sh [LABEL ...]
set -euo pipefail
OUT=${OUT:-docs/results/cifar10/adapter-search}
PFEDLORA=${PFEDLORA:-pfedlora}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
CONFIG=configs/paper/cifar10_n10_tuned.yaml

run() {  # label overrides...
  local label=$1; shift
  local sets=()
  for override in "$@"; do sets+=(--set "$override"); done
  local start=$SECONDS load
  load=$(cut -d' ' -f1 /proc/loadavg)
  $PFEDLORA compare --config "$CONFIG" --algorithms pfedlora --seeds 0 --set dataset.path="$DATA" \
    --set dataset.validation_fraction=0.2 --set train.lr=0.02 ${sets[@]+"${sets[@]}"} --out "$OUT/$label" > /dev/null
  echo "$label: $((SECONDS - start)) s (load $load at start, $(cut -d' ' -f1 /proc/loadavg) at end)"
}

declare -A RUNS=(
  # the tuned configuration (additive, zero-init, mu 0.5, rank 8 on the 2x pooled image)
  [reference]=""
  # 1. the tuned branch adapter with a 10x learning rate and no weight decay on its step (LoRA+:
  #    the zero-initialised output layer needs a larger step than the local model to leave zero)
  [branch,lr_scale=10,wd=0]="adapter.lr_scale=10 adapter.weight_decay=0"
  # 2. an output scale: mu 4 (the adapter's logits x4, its gradient x4), no weight decay
  [branch,mu=4,wd=0]="adapter.mu=4 adapter.weight_decay=0"
  # 3. the adapter trained longer: 3 adapter epochs at 5x lr, no weight decay
  [branch,epochs=3,lr_scale=5,wd=0]="train.adapter_epochs=3 adapter.lr_scale=5 adapter.weight_decay=0"
  # 4. the adapter on the local model's representation (head LoRA rank 8), mu 1, 10x lr, no decay
  [head,mu=1,lr_scale=10,wd=0]="adapter.placement=head adapter.input_pool=1 adapter.zero_init=false adapter.combine=null adapter.mu=1 adapter.lr_scale=10 adapter.weight_decay=0"
  # 5. the paper's convex mix with a random-initialised adapter (active by construction), mu 0.3
  [branch,convex,random-init,mu=0.3]="adapter.combine=convex adapter.zero_init=false adapter.mu=0.3"
  # 6. the paper's convex mix, random init, mu 0.1 (less weight, still active)
  [branch,convex,random-init,mu=0.1]="adapter.combine=convex adapter.zero_init=false adapter.mu=0.1"
)
ORDER=(reference "branch,lr_scale=10,wd=0" "branch,mu=4,wd=0" "branch,epochs=3,lr_scale=5,wd=0"
       "head,mu=1,lr_scale=10,wd=0" "branch,convex,random-init,mu=0.3" "branch,convex,random-init,mu=0.1")
LABELS=("$@")
[ ${#LABELS[@]} -eq 0 ] && LABELS=("${ORDER[@]}")
for label in "${LABELS[@]}"; do
  read -r -a overrides <<< "${RUNS[$label]}"
  run "$label" ${overrides[@]+"${overrides[@]}"}
done
