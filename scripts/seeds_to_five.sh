#!/usr/bin/env bash
# Issue #36: seeds 0-4 for the algorithms the results pages' findings name, in the map's six cells
# (docs/results/map/, configs/map/cifar10_n20.yaml, learning rates of lr-check/chosen-n*.txt) and in
# the CIFAR-10 20-round table (docs/results/cifar10/n10-tuned*, configs/paper/cifar10_n10_tuned.yaml).
# `compare` reuses every finished run (seeds 0-2 or 0-1 are committed), so only the new seeds run;
# an interrupted script continues where it stopped. Wall times go to docs/results/map/wall_times.txt
# ("issue36 ..." lines; a compare's wall time covers its runs executed two at a time, --jobs auto).
#   bash scripts/seeds_to_five.sh cifar10        # the 20-round table's five named algorithms
#   bash scripts/seeds_to_five.sh map [ALGS]     # the map's cells (default ALGS: the five named most;
#                                                #   PER_CLIENT_ONLY=50: the 50-image cells only)
#   bash scripts/seeds_to_five.sh cifar10-named  # FD, FedTGP and FedL2G in the 20-round table
#   bash scripts/seeds_to_five.sh held-rows      # FedL2G in the map again at seeds 0-2 (FedTGP: map ...,fedtgp)
# Session 12 (2026-12-07) ran `cifar10-named` after removing the 20-round table's FedTGP and FedL2G runs
# made before that day (they uploaded dense [C, d] tables; today a client sends the rows of the classes
# it holds, and the accuracy is bit for bit the same): the old runs are in git history. It then ran
# `PER_CLIENT_ONLY=50 ... map fd,fedkd,fedgh`, removed FedTGP's 50-image map runs and made them again
# (`PER_CLIENT_ONLY=50 ... map fedtgp`), ran `PER_CLIENT_ONLY=250 ... map fd,fedkd,fedgh`, and did the
# same for FedTGP at 250 images. FedL2G's map runs (`held-rows`) are not redone.
# Afterwards `python scripts/gen_results.py` rewrites the pages' tables and figures from the runs.
set -euo pipefail
PFEDLORA=${PFEDLORA:-pfedlora}
JOBS=${JOBS:-auto}
SEEDS=${SEEDS:-0,1,2,3,4}
LOG=docs/results/map/wall_times.txt

timed() {  # label command...
  local label=$1 start=$SECONDS; shift
  "$@" > /dev/null
  echo "issue36 $label: $((SECONDS - start)) s (load $(cut -d' ' -f1 /proc/loadavg))" | tee -a "$LOG"
}

case ${1:-} in
  cifar10)
    T=configs/paper/cifar10_n10_tuned.yaml
    # FedProto and FedMRL at their validated 0.01
    timed "cifar10 n10-tuned fedproto,fedmrl seeds $SEEDS" $PFEDLORA compare --config $T --algorithms fedproto,fedmrl \
      --seeds $SEEDS --set train.lr=0.01 --jobs "$JOBS" --out docs/results/cifar10/n10-tuned
    # Standalone and FML at 0.02; their seeds 0-2 were made with validation.norm_factor 10 (Standalone
    # uploads nothing and no FML upload was rejected, so it changes no number): kept, so they are reused
    timed "cifar10 n10-tuned standalone,fml seeds $SEEDS" $PFEDLORA compare --config $T --algorithms standalone,fml \
      --seeds $SEEDS --set train.lr=0.02 --set validation.norm_factor=10 --jobs "$JOBS" --out docs/results/cifar10/n10-tuned
    # pFedLoRA at 0.02; seeds 0-2 name the archive by its absolute path on this machine
    timed "cifar10 n10-tuned-pfedlora-tuned seeds $SEEDS" $PFEDLORA compare --config $T --algorithms pfedlora \
      --seeds $SEEDS --set train.lr=0.02 --set dataset.path="${DATA:-/work/shared/data/cifar10-jpeg.tar.gz}" \
      --jobs "$JOBS" --out docs/results/cifar10/n10-tuned-pfedlora-tuned ;;
  cifar10-named)  # the 20-round table's other named algorithms: FD and FedTGP at 0.01, FedL2G at 0.02
    T=configs/paper/cifar10_n10_tuned.yaml
    timed "cifar10 n10-tuned fd,fedtgp,fedl2g seeds $SEEDS" $PFEDLORA compare --config $T \
      --algorithms fd,fedtgp,fedl2g --seeds $SEEDS --set-for fedl2g:train.lr=0.02 --jobs "$JOBS" \
      --out docs/results/cifar10/n10-tuned ;;
  held-rows)  # FedL2G in the map's cells at the seeds the others (but the named five) have: 0-2
    SEEDS=0,1,2 bash "$0" map fedl2g ;;
  map)
    # default: the five algorithms the map's findings name most, cheapest first (the 50-image cells,
    # then Standalone, FedProto and pFedLoRA at 250 images, then FedMRL and LG-FedAvg at 250)
    declare -A PARTITION=(
      [path2]="partition.kind=pathological partition.classes_per_client=2"
      [dir0.1]="partition.kind=dirichlet partition.alpha=0.1"
      [dir0.5]="partition.kind=dirichlet partition.alpha=0.5"
    )
    if [ -n "${2:-}" ]; then
      PLAN=("50 $2" "250 $2")
      [ -n "${PER_CLIENT_ONLY:-}" ] && PLAN=("$PER_CLIENT_ONLY $2")  # e.g. PER_CLIENT_ONLY=50: that column only
    else
      PLAN=("50 standalone,pfedlora,fedproto,fedmrl,lg_fedavg" "250 standalone,pfedlora,fedproto" "250 fedmrl,lg_fedavg")
    fi
    for step in "${PLAN[@]}"; do
      n=${step%% *}; algs=${step#* }
      mapfile -t lr_sets < <(sed 's/^/--set-for\n/' "docs/results/map/lr-check/chosen-n$n.txt")
      for setting in path2 dir0.1 dir0.5; do
        sets=()
        for override in ${PARTITION[$setting]} dataset.max_train_samples=$(( n * 20 )); do sets+=(--set "$override"); done
        timed "map $setting n$n $algs seeds $SEEDS" $PFEDLORA compare --config configs/map/cifar10_n20.yaml \
          --algorithms "$algs" --seeds $SEEDS "${sets[@]}" "${lr_sets[@]}" --jobs "$JOBS" \
          --out "docs/results/map/$setting-n$n"
      done
    done ;;
  *) echo "usage: bash scripts/seeds_to_five.sh cifar10 | cifar10-named | held-rows | map [ALGORITHMS]" >&2; exit 2 ;;
esac
