#!/usr/bin/env bash
# Issue #9: the paper's five open questions, one sweep each (configs/open-questions/*.yaml).
# Runs identical to the CIFAR-10 comparison's (same config and seed) are copied in first, so the
# sweeps reuse them instead of training them again (run `scripts/paper_cifar10.sh` before).
set -euo pipefail
OUT=${OUT:-docs/results/open-questions}
PAPER=${PAPER:-docs/results/cifar10/n10}
PFEDLORA=${PFEDLORA:-pfedlora}
timed() { local start=$SECONDS; "$@"; echo "wall: $((SECONDS - start)) s: $*"; }
reuse() {  # algorithm seed point-dir: copy a finished comparison run (compare checks its config)
  if [ -f "$PAPER/$1/seed$2/summary.json" ] && [ ! -e "$3/$1/seed$2" ]; then
    mkdir -p "$3/$1"; cp -r "$PAPER/$1/seed$2" "$3/$1/seed$2"; rm -f "$3/$1/seed$2/checkpoint.pt"
  fi
}
for seed in 0 1 2; do reuse pfedlora $seed "$OUT/q1/adapter.schedule-iterative"; done
reuse pfedlora 0 "$OUT/q2/adapter.construction-reduced__adapter.rank-16"
MU=$(awk '/^  mu:/ {print $2}' configs/paper/cifar10_n10.yaml)
reuse pfedlora 0 "$OUT/q3/adapter.placement-branch__adapter.mu-$MU"
for algorithm in pfedlora standalone lg_fedavg fd fedproto fml fedkd fedgh; do
  reuse $algorithm 0 "$OUT/q5-noise/dataset.label_noise-0.0"
done
timed $PFEDLORA sweep --config configs/open-questions/q1_schedule.yaml --out "$OUT/q1"
timed $PFEDLORA sweep --config configs/open-questions/q2_adapter.yaml --out "$OUT/q2"
timed $PFEDLORA sweep --config configs/open-questions/q3_mu_placement.yaml --out "$OUT/q3"
timed $PFEDLORA sweep --config configs/open-questions/q5_noise.yaml --out "$OUT/q5-noise"
timed $PFEDLORA sweep --config configs/open-questions/q5_imbalance.yaml --out "$OUT/q5-imbalance"
timed $PFEDLORA sweep --config configs/open-questions/q4_scale.yaml --out "$OUT/q4"
