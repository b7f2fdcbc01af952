"""Every baseline runs end to end on the bundled digits and beats chance by a measured margin."""

import pytest

from pfedlora.config import build_config
from pfedlora.federation.simulation import run

# 5 clients (one per CNN), pathological 2 classes each, 2 rounds, evaluated once at the end.
SMALL = {"num_clients": 5, "rounds": 2, "eval_every": 2, "train": {"batch_size": 32}}

# algorithm -> (final mean accuracy % measured with seed 0 on CPU, floor asserted).
# Personalized models on 2-class clients: chance is ~50%; the floors sit ~7-12 points below the
# measurement (one client flipping between 100% and 50% moves the mean by 10 points). Measured
# 2026-11-30 with the whole-string seed derivation. With 5 clients x 2 classes every class has one
# holder, so FD's leave-one-out targets are empty and FD equals Standalone here; whether each
# federated term acts is tested in test_federated_terms.py.
MEASURED = {
    "standalone": (61.5, 55.0),
    "lg_fedavg": (71.7, 60.0),
    "fd": (61.5, 55.0),
    "fedproto": (71.3, 60.0),
    "fml": (86.0, 75.0),
    "fedkd": (89.7, 78.0),
    "fedgh": (62.8, 55.0),
    # FedAvg is evaluated with its one global 10-class model (chance 10%), here on an IID split
    "fedavg": (45.3, 35.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(MEASURED))
def test_baseline_runs_end_to_end_and_beats_chance(algorithm, tmp_path):
    config = {**SMALL, "algorithm": algorithm}
    if algorithm == "fedavg":
        config.update(model_pool=["cnn5"], partition={"kind": "iid"})
    summary = run(build_config(config), tmp_path / "run", log=lambda _: None)
    assert summary["algorithm"] == algorithm and summary["rounds"] == 2
    measured, floor = MEASURED[algorithm]
    assert summary["final_accuracy"] >= floor, f"measured {measured}%"
