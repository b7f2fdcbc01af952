"""Per-round costs in metrics.csv and summary.json of a real (tiny) run."""

import csv

import pytest

from pfedlora.config import build_config
from pfedlora.federation.simulation import run
from pfedlora.metrics.costs import time_to_target

TINY = {"num_clients": 3, "rounds": 2, "eval_every": 2, "model_pool": ["cnn5"], "partition": {"kind": "iid"},
        "train": {"batch_size": 256}, "payload_dtype": "float16", "target_accuracy": 1.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("costs")
    summary = run(build_config(TINY), out, log=lambda _: None)
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return summary, rows


def test_metrics_rows_carry_wire_bytes_and_flops_of_unevaluated_rounds(tiny_run):
    summary, rows = tiny_run
    assert len(rows) == 1  # round 1 is not evaluated: its costs are in the round-2 row
    row = {k: float(v) for k, v in rows[0].items()}
    adapter_bytes = summary["adapter_parameters"] * 2  # float16 on the wire
    assert row["up_bytes"] == row["down_bytes"] == 2 * 3 * adapter_bytes
    assert row["cum_up_bytes"] == row["up_bytes"] and row["cum_train_flops"] == row["train_flops"] > 0
    assert row["eval_flops"] > 0 and row["server_flops"] > 0
    assert summary["total_up_bytes"] == summary["total_down_bytes"] == row["up_bytes"]
    assert summary["total_train_flops"] == row["train_flops"]
    assert summary["total_server_flops"] == row["server_flops"]
    assert summary["client_rounds"] == 6 and summary["up_bytes_per_client_round"] == adapter_bytes
    assert summary["payload_dtype"] == "float16"
    assert summary["time_to_target"]["round"] == 2
    assert summary["time_to_target"]["bytes"] == 4 * 3 * adapter_bytes


def test_time_to_target_on_a_synthetic_history():
    history = [
        {"round": 1, "mean_acc": 40.0, "cum_train_flops": 100, "cum_server_flops": 1, "cum_up_bytes": 10, "cum_down_bytes": 20},
        {"round": 3, "mean_acc": 70.0, "cum_train_flops": 300, "cum_server_flops": 3, "cum_up_bytes": 30, "cum_down_bytes": 60},
        {"round": 5, "mean_acc": 65.0, "cum_train_flops": 500, "cum_server_flops": 5, "cum_up_bytes": 50, "cum_down_bytes": 100},
    ]
    assert time_to_target(history, 70.0) == {"target": 70.0, "round": 3, "flops": 303, "bytes": 90}
    assert time_to_target(history, 40.0)["round"] == 1
    assert time_to_target(history, 71.0) is None
