#!/usr/bin/env bash
# Issue #38: the paper's five open questions on today's code (docs/results/open-questions.md).
# Base: configs/paper/cifar10_n10_active.yaml (pFedLoRA's validation-chosen configuration with an
# active adapter), Standalone at its tuned lr 0.02 as the reference, seeds 0-2. Finished runs are
# reused and interrupted ones resume, so rerunning a stage after an interruption continues it.
#   bash scripts/open_questions.sh [base q1 q2 q3 q5-noise q5-imbalance q4]   (default: all, in order)
#   python scripts/gen_results.py                                          (the page's tables)
set -euo pipefail
OUT=${OUT:-docs/results/open-questions}
PFEDLORA=${PFEDLORA:-pfedlora}
JOBS=${JOBS:-auto}
SEEDS=${SEEDS:-0,1,2}
BASE=configs/paper/cifar10_n10_active.yaml
ACTIVE=docs/results/cifar10/n10-tuned-pfedlora-active/pfedlora  # the same runs as the base's pFedLoRA
STANDALONE_LR=(--set-for standalone:train.lr=0.02)
mkdir -p "$OUT"
timed() {  # label command...
  local label=$1 start=$SECONDS; shift
  "$@" > /dev/null
  echo "$label: $((SECONDS - start)) s (load $(cut -d' ' -f1 /proc/loadavg))" | tee -a "$OUT/wall_times.txt"
}
reuse() {  # run-dir destination: copy a finished run (compare and sweep check its config before reusing it)
  if [ -f "$1/summary.json" ] && [ ! -e "$2" ]; then
    mkdir -p "$(dirname "$2")"; cp -r "$1" "$2"; rm -f "$2/checkpoint.pt"
  fi
}
compare_at() {  # label out-dir --set... : Standalone and pFedLoRA at the base with overrides
  local label=$1 out=$2; shift 2
  timed "$label seeds $SEEDS" $PFEDLORA compare --config "$BASE" --algorithms standalone,pfedlora --seeds "$SEEDS" \
    "${STANDALONE_LR[@]}" "$@" --jobs "$JOBS" --out "$out"
}
stage() {
  case $1 in
    base)
      for seed in 0 1 2; do reuse "$ACTIVE/seed$seed" "$OUT/base/pfedlora/seed$seed"; done
      compare_at base "$OUT/base" ;;
    q1|q2|q3)
      local config=(configs/open-questions/"$1"_*.yaml)
      for seed in 0 1 2; do
        local from=$OUT/base/pfedlora/seed$seed
        case $1 in
          q1) reuse "$from" "$OUT/q1/adapter.schedule+adapter.lr_scale+adapter.weight_decay+adapter.step2_outputs-_iterative_10_0_recorded/pfedlora/seed$seed" ;;
          q2) reuse "$from" "$OUT/q2/adapter.construction-reduced__adapter.rank-8/pfedlora/seed$seed" ;;
          q3) reuse "$from" "$OUT/q3/adapter.placement+adapter.input_pool-_branch_2___adapter.mu-0.5/pfedlora/seed$seed" ;;
        esac
      done
      timed "$1 seeds $SEEDS" $PFEDLORA sweep --config "${config[0]}" --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/$1" ;;
    q5-noise)
      for noise in 0.2 0.4; do
        compare_at "q5-noise $noise" "$OUT/q5-noise/label_noise-$noise" --set dataset.label_noise=$noise
      done ;;
    q5-imbalance)  # Dirichlet with long-tailed client sizes (Zipf weights rank^-1)
      for alpha in 0.1 0.5; do
        compare_at "q5-imbalance $alpha" "$OUT/q5-imbalance/alpha-$alpha" --set partition.kind=dirichlet \
          --set partition.alpha=$alpha --set partition.size_skew=1.0 --set partition.min_samples=10
      done ;;
    q4)  # all 50,000 training images, 10 clients a round, 40 rounds
      local ten='[cnn1,cnn2,cnn3,cnn4,cnn5,cnn_wide,cnn_deep,vgg_s,resnet8,mobilenet_s]'
      for clients in 100 1000; do
        local fraction; fraction=$(python3 -c "print(10 / $clients)")
        for pool in five ten; do
          local pool_set=()
          [ "$pool" = ten ] && pool_set=(--set "model_pool=$ten")
          compare_at "q4 $clients clients $pool" "$OUT/q4/clients-$clients-$pool" --set num_clients=$clients \
            --set fraction=$fraction --set rounds=40 --set eval_every=5 --set dataset.max_train_samples=null \
            --set dataset.max_test_samples=1000 "${pool_set[@]}"
        done
      done ;;
    *) echo "usage: bash scripts/open_questions.sh [base q1 q2 q3 q5-noise q5-imbalance q4]" >&2; exit 2 ;;
  esac
}
drop_checkpoints() {  # a finished run's checkpoint is not kept under docs/results (6 GB at 1,000 clients)
  find "$OUT" -name checkpoint.pt | while read -r file; do
    if [ -f "$(dirname "$file")/summary.json" ]; then rm -f "$file"; fi
  done
}
for name in "${@:-base q1 q2 q3 q5-noise q5-imbalance q4}"; do
  for each in $name; do stage "$each"; drop_checkpoints; done
done
