#!/usr/bin/env bash
# Issue #29: "When does federating help?" (docs/results/when-federation-helps.md). CIFAR-10, 20
# clients, CNN-1..5, 30 rounds (configs/map/cifar10_n20.yaml), heterogeneity {pathological 2 classes,
# Dirichlet 0.1, Dirichlet 0.5} x data per client {50, 250 training images}, every algorithm at its
# validation-tuned values. Finished runs are reused and interrupted ones resume, so rerunning the
# script after an interruption continues where it stopped.
#   bash scripts/federation_map.sh lr       # step 1: the learning-rate check (validation split)
#   bash scripts/federation_map.sh map S    # step 2: the map for seeds 0..S (seed-major: every setting
#                                           #   gets seed 0 before any gets seed 1)
#   bash scripts/federation_map.sh fedavg   # step 3: FedAvg on homogeneous pools (reference)
#   bash scripts/federation_map.sh long CELL [ROUNDS] [LAST_SEED]   # issue 38: Standalone, FedProto,
#                                           #   pFedLoRA, FedGH and FD in one cell (e.g. path2-n50) for
#                                           #   ROUNDS (default 150) rounds, seed-major
#   python scripts/federation_map.py        # tables, heatmaps and the bytes figure from the summaries
set -euo pipefail
OUT=${OUT:-docs/results/map}
PFEDLORA=${PFEDLORA:-pfedlora}
JOBS=${JOBS:-auto}
CONFIG=configs/map/cifar10_n20.yaml
ALGORITHMS=standalone,pfedlora,lg_fedavg,fd,fedproto,fml,fedkd,fedgh,fedtgp,fedmrl,fedgen,fedl2g
# the learning rates chosen on the CIFAR-10 validation split (docs/results/cifar10.md); the others 0.01
TUNED_LR=(--set-for standalone:train.lr=0.02 --set-for lg_fedavg:train.lr=0.02 --set-for fml:train.lr=0.02
          --set-for fedl2g:train.lr=0.02 --set-for pfedlora:train.lr=0.02)

declare -A PARTITION=(
  [path2]="partition.kind=pathological partition.classes_per_client=2"
  [dir0.1]="partition.kind=dirichlet partition.alpha=0.1"
  [dir0.5]="partition.kind=dirichlet partition.alpha=0.5"
)
SETTINGS=(path2 dir0.1 dir0.5)
PER_CLIENT=(${PER_CLIENT_OVERRIDE:-50 250})  # PER_CLIENT_OVERRIDE=50: the 50-image columns only

sets_for() {  # setting per_client -> --set arguments
  local args=()
  for override in ${PARTITION[$1]} dataset.max_train_samples=$(( $2 * 20 )); do args+=(--set "$override"); done
  echo "${args[@]}"
}

timed() {  # label command...
  local label=$1 start=$SECONDS; shift
  "$@" > /dev/null
  echo "$label: $((SECONDS - start)) s (load $(cut -d' ' -f1 /proc/loadavg))" | tee -a "$OUT/wall_times.txt"
}

mkdir -p "$OUT"
case ${1:-} in
  lr)  # one learning-rate check per algorithm per data size, on Dirichlet 0.1's validation split
    for n in "${PER_CLIENT[@]}"; do
      # shellcheck disable=SC2046
      timed "lr-check n$n tuned" $PFEDLORA compare --config "$CONFIG" --algorithms "$ALGORITHMS" --seeds 0 \
        $(sets_for dir0.1 "$n") --set dataset.validation_fraction=0.2 "${TUNED_LR[@]}" \
        --jobs "$JOBS" --out "$OUT/lr-check/n$n-tuned"
      # shellcheck disable=SC2046
      timed "lr-check n$n lr=0.05" $PFEDLORA compare --config "$CONFIG" --algorithms "$ALGORITHMS" --seeds 0 \
        $(sets_for dir0.1 "$n") --set dataset.validation_fraction=0.2 --set train.lr=0.05 \
        --jobs "$JOBS" --out "$OUT/lr-check/n$n-lr0.05"
    done ;;
  map)
    last=${2:-2}
    for seed in $(seq 0 "$last"); do
      seeds=$(seq -s, 0 "$seed")
      for setting in "${SETTINGS[@]}"; do
        for n in "${PER_CLIENT[@]}"; do
          lr_file="$OUT/lr-check/chosen-n$n.txt"  # written by scripts/federation_map.py --choose-lr
          lr_sets=("${TUNED_LR[@]}")
          if [ -f "$lr_file" ]; then mapfile -t lr_sets < <(sed 's/^/--set-for\n/' "$lr_file"); fi
          # shellcheck disable=SC2046
          timed "$setting n$n seeds $seeds" $PFEDLORA compare --config "$CONFIG" --algorithms "$ALGORITHMS" \
            --seeds "$seeds" $(sets_for "$setting" "$n") "${lr_sets[@]}" \
            --jobs "$JOBS" --out "$OUT/$setting-n$n"
        done
      done
    done ;;
  fedavg)  # what one shared model could do: FedAvg on a homogeneous pool of each CNN (seed 0)
    for setting in "${SETTINGS[@]}"; do
      for n in "${PER_CLIENT[@]}"; do
        # shellcheck disable=SC2046
        timed "fedavg $setting n$n" $PFEDLORA sweep --config "$CONFIG" --algorithms fedavg --seeds 0 \
          $(sets_for "$setting" "$n") --grid 'model_pool=[[cnn1],[cnn2],[cnn3],[cnn4],[cnn5]]' \
          --jobs "$JOBS" --out "$OUT/fedavg/$setting-n$n"
      done
    done ;;
  long)  # does the ranking hold with more training? the values tuned for 30 rounds, evaluated every 5
    cell=${2:?usage: bash scripts/federation_map.sh long CELL [ROUNDS] [LAST_SEED]}
    rounds=${3:-150}; last=${4:-2}
    setting=${cell%-n*}; n=${cell##*-n}
    lr_file="$OUT/lr-check/chosen-n$n.txt"
    lr_sets=("${TUNED_LR[@]}")
    if [ -f "$lr_file" ]; then mapfile -t lr_sets < <(sed 's/^/--set-for\n/' "$lr_file"); fi
    for seed in $(seq 0 "$last"); do
      seeds=$(seq -s, 0 "$seed")
      # shellcheck disable=SC2046
      timed "long $cell $rounds rounds seeds $seeds" $PFEDLORA compare --config "$CONFIG" \
        --algorithms standalone,fedproto,pfedlora,fedgh,fd --seeds "$seeds" $(sets_for "$setting" "$n") \
        "${lr_sets[@]}" --set rounds="$rounds" --set eval_every=5 --jobs "$JOBS" --out "$OUT/long/$cell-r$rounds"
    done ;;
  *) echo "usage: bash scripts/federation_map.sh lr | map [LAST_SEED] | fedavg | long CELL [ROUNDS] [LAST_SEED]" >&2; exit 2 ;;
esac
