#!/usr/bin/env bash
# The two screenshots of docs/guide/tracking.md: a 3-round quickstart tracked to TensorBoard and MLflow,
# each dashboard served on 127.0.0.1 and photographed with headless Chromium.
#
#   scripts/tracking_screenshots.sh [MLFLOW_BIN]
#
# Needs chromium (apt-get install -y chromium) and the MLflow UI: the full `mlflow` package, whose
# `mlflow` command is MLFLOW_BIN (default: mlflow on PATH; e.g. a separate venv's bin/mlflow, since
# the [tracking] extra installs the client only). Writes docs/guide/img/{tensorboard,mlflow}.png.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin"
MLFLOW_BIN="${1:-mlflow}"
WORK="$(mktemp -d)"
OUT="$ROOT/docs/guide/img"
mkdir -p "$OUT"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cd "$WORK"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
"$BIN/pfedlora" run --set "tracking=[tensorboard,mlflow]" --set rounds=3 --out runs/tracked

wait_for() {  # URL: until it answers (60 s)
    for _ in $(seq 120); do curl -sf -o /dev/null "$1" && return 0; sleep 0.5; done
    echo "no answer from $1" >&2; return 1
}

shoot() {  # URL FILE
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --user-data-dir="$(mktemp -d -p "$WORK")" --hide-scrollbars \
        --virtual-time-budget=60000 --window-size=1400,900 --screenshot="$2" "$1"
}

"$BIN/tensorboard" --logdir runs --host 127.0.0.1 --port 6006 >"$WORK/tensorboard.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:6006/data/runs"
shoot "http://127.0.0.1:6006/?darkMode=false#scalars&tagFilter=acc" "$OUT/tensorboard.png"

"$MLFLOW_BIN" ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port 5000 >"$WORK/mlflow.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:5000/health"
EXPERIMENT="$("$BIN/python" -c "import json; print(json.load(open('runs/tracked/tracking.json'))['mlflow']['experiment_id'])")"
# the experiment's runs with their metric charts, in the model-training view (a run page's own charts
# are drawn lazily, after headless Chromium has taken its picture)
URL="http://127.0.0.1:5000/#/experiments/$EXPERIMENT/runs?workflowType=machine_learning&compareRunsMode=CHART"
shoot "$URL" "$WORK/warm-up.png"  # a fresh server's first page load can outlast Chromium's budget
shoot "$URL" "$OUT/mlflow.png"
echo "wrote $OUT/tensorboard.png $OUT/mlflow.png"
