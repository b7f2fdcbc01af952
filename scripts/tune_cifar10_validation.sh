#!/usr/bin/env bash
# Issue #16 tuning, with the corrected baselines (FD leave-one-out, FedProto plain mean; 2026-11-30):
# every algorithm gets the same budget, 6 runs on the validation split (dataset.validation_fraction
# = 0.2: 20% of each client's training images held out and evaluated on; the test split is never
# read), in the setting of configs/paper/cifar10_n10.yaml (10 clients, CNN-1..5, 5,000-image
# subset, 20 rounds, seed 0). Baselines spend their 6 on their main knob, on grids that extend
# past the value that won the earlier 3-value tuning; Standalone and LG-FedAvg, which have no
# federated knob, spend theirs on the learning rate. pFedLoRA spends its 6 on placement x combine
# x mu x construction (configurations within the cost limits of issue #16: at most FedProto's
# bytes per client per round; see docs/results/cifar10.md).
# Finished runs are reused, so the script can be rerun after an interruption.
#   bash scripts/tune_cifar10_validation.sh [ALGORITHM ...]   (default: all eight)
set -euo pipefail
OUT=${OUT:-docs/results/cifar10/tuning-v2}
PFEDLORA=${PFEDLORA:-pfedlora}
CONFIG=configs/paper/cifar10_n10.yaml

run() {  # algorithm label overrides...
  local algorithm=$1 label=$2; shift 2
  local sets=()
  for override in "$@"; do sets+=(--set "$override"); done
  local start=$SECONDS
  $PFEDLORA compare --config "$CONFIG" --algorithms "$algorithm" --seeds 0 \
    --set dataset.validation_fraction=0.2 "${sets[@]}" --out "$OUT/$algorithm/$label" > /dev/null
  echo "$algorithm $label: $((SECONDS - start)) s (load $(cut -d' ' -f1 /proc/loadavg))"
}

tune() {  # algorithm key values...
  local algorithm=$1 key=$2; shift 2
  for value in "$@"; do run "$algorithm" "$key=$value" "$key=$value"; done
}

tune_pfedlora() {
  # the adapter at most FedProto's 40.1 kB per client per round: head LoRA rank 8 (4,080 parameters)
  # or the reduced branch adapter of rank 8 on a 2x pooled input (2,450 parameters); step 2 reuses
  # the local model's outputs recorded in step 1 (adapter.step2_outputs: recorded), which keeps the
  # computation within 1.3x Standalone's
  local head=(algorithm=pfedlora adapter.placement=head adapter.rank=8 adapter.step2_outputs=recorded)
  local branch=(algorithm=pfedlora adapter.placement=branch adapter.construction=reduced adapter.rank=8
                adapter.input_pool=2 adapter.zero_init=true adapter.step2_outputs=recorded)
  run pfedlora "head,mu=1" "${head[@]}" adapter.mu=1.0
  run pfedlora "head,mu=0.3" "${head[@]}" adapter.mu=0.3
  run pfedlora "head,mu=0.05" "${head[@]}" adapter.mu=0.05
  run pfedlora "branch,additive,mu=0.5" "${branch[@]}" adapter.combine=additive adapter.mu=0.5
  run pfedlora "branch,additive,mu=0.05" "${branch[@]}" adapter.combine=additive adapter.mu=0.05
  run pfedlora "branch,convex,mu=0.05" "${branch[@]}" adapter.combine=convex adapter.mu=0.05
}

# Issue #26: one learning-rate run per algorithm at its tuned knob (0.02; the knob grids ran at 0.01),
# as pFedLoRA and Standalone/LG-FedAvg had, so the tables carry no learning-rate confound.
lr_check() {  # algorithm tuned-overrides...
  local algorithm=$1; shift
  run "$algorithm" "lr=0.02" "$@" train.lr=0.02
}

ALGORITHMS=("$@")
[ ${#ALGORITHMS[@]} -eq 0 ] && ALGORITHMS=(standalone lg_fedavg fd fedproto fml fedkd fedgh pfedlora fedmrl fedgen fedtgp fedl2g lr)
for algorithm in "${ALGORITHMS[@]}"; do
  case $algorithm in
    standalone|lg_fedavg) tune "$algorithm" train.lr 0.003 0.01 0.02 0.05 0.1 0.2 ;;
    # FD's first six put the winner (0.1) at the grid's lower edge: two more values below it, so
    # FD had 8 runs (the only algorithm with more than 6; docs/results/cifar10.md says so)
    fd) tune fd fd.gamma 0.1 0.3 1 3 10 30 0.03 0.01 ;;
    fedproto) tune fedproto fedproto.lam 0.1 1 3 10 30 100 ;;
    fml) tune fml fml.alpha 0.3 0.5 0.7 0.8 0.9 0.97 ;;
    # FedKD's first six put the winner (8) at the upper edge, within 0.1 point of 1 and 4: one more value
    fedkd) tune fedkd fedkd.temperature 0.25 0.5 1 2 4 8 16 ;;
    fedgh) tune fedgh fedgh.server_lr 0.0001 0.0003 0.001 0.003 0.01 0.1 ;;
    pfedlora) tune_pfedlora ;;
    # issue #26: the new algorithms' main knob (6 runs each, grids past the papers' defaults both ways)
    fedmrl) tune fedmrl fedmrl.sub_feature_dim 25 50 100 200 300 500 ;;
    # FedGen's first six rose to the upper edge (30: 77.76, 10: 77.58): one more value above it
    fedgen) tune fedgen fedgen.generative_weight 0.1 0.3 1 3 10 30 100 ;;
    fedtgp) tune fedtgp fedtgp.lam 0.3 1 3 10 30 100 ;;
    # the aggregated meta-gradient is ~1e-3, so the guiding vectors hardly move at the authors' 0.01
    # the winner of the first six sat at the upper edge (1000); 10000 extends the grid (56.50: 1000 stays)
    fedl2g) tune fedl2g fedl2g.server_lr 0.01 0.1 1 10 100 1000 10000 ;;
    # the learning-rate run of every algorithm tuned at 0.01, at its chosen knob (FD's and FedProto's
    # are in tuning-v2-supplementary/; the 2026-12-05 reruns of both reproduced them bit for bit).
    lr)
      lr_check fml fml.alpha=0.97
      lr_check fedkd fedkd.temperature=16
      lr_check fedgh fedgh.server_lr=0.003
      lr_check fedtgp fedtgp.lam=30
      lr_check fedmrl fedmrl.sub_feature_dim=300
      lr_check fedl2g fedl2g.server_lr=1000
      lr_check fedgen fedgen.generative_weight=30 ;;
    *) echo "unknown algorithm $algorithm" >&2; exit 2 ;;
  esac
done
