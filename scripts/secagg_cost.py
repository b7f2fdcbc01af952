"""The cost of SecAgg+ per round against plaintext Flower (docs/results/privacy.md).

Starts a SuperLink and 3 SuperNodes on 127.0.0.1 (the harness of tests/federation/test_flower.py),
runs the same federation twice with `flwr run` (pFedLoRA on digits, 3 clients, cnn5/cnn4/cnn3, 4
rounds, evaluation every round): plaintext, then flower.secagg.enabled=true. Writes both run
directories and a JSON of per-round times (between consecutive metrics rows: one training round plus
one evaluation) and bytes (up_bytes / down_bytes of the metrics rows) under OUT.

    PYTHONPATH=src python scripts/secagg_cost.py docs/results/privacy/secagg_cost
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("flower_harness", REPO / "tests" / "federation" / "test_flower.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(out: Path) -> None:
    harness = _harness()
    from pfedlora.metrics.run_dir import read_metrics

    out = out.resolve()  # the ServerApp writes relative to where the SuperLink runs
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        cluster = harness.Cluster(Path(scratch), tls=False)
        cluster.start()
        try:
            for name, extra in (("plaintext", {}), ("secagg", {"flower.secagg.enabled": True})):
                run_dir = out / name
                started = time.monotonic()
                cluster.flwr_run(run_dir, **{"rounds": 4, "eval_every": 1, "overwrite": True, **extra})
                harness._wait_for(cluster, lambda: (run_dir / "summary.json").exists(), f"{name} run")
                rows = read_metrics(run_dir / "metrics.csv")
                seconds = [b["wall_s"] - a["wall_s"] for a, b in zip(rows, rows[1:])]
                results[name] = {
                    "round_seconds_after_round_1": seconds,
                    "median_round_seconds": statistics.median(seconds),
                    "up_bytes_per_round": [r["up_bytes"] for r in rows],
                    "down_bytes_per_round": [r["down_bytes"] for r in rows],
                    "final_accuracy": rows[-1]["mean_acc"],
                    "run_seconds": time.monotonic() - started,
                }
                print(name, json.dumps(results[name]))
        finally:
            cluster.close()
    (out / "secagg_cost.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/privacy/secagg_cost"))
