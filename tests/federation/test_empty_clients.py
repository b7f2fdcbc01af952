"""A client with no training samples is skipped with a logged reason; an empty test split is left
out of the mean accuracy (not counted as 0%), and the summary says how many were left out."""

import json

import pytest

from pfedlora.config import build_config
from pfedlora.federation import simulation
from pfedlora.federation.simulation import run

SMALL = {"num_clients": 5, "rounds": 2, "train": {"batch_size": 32},
         "dataset": {"max_train_samples": 400, "max_test_samples": 200}}


@pytest.fixture
def empty_splits(monkeypatch):
    """Client 0 gets no training samples, client 1 no test samples."""
    original = simulation.client_data

    def client_data(config, dataset, client_id, split, device):
        data = original(config, dataset, client_id, split, device)
        if client_id == 0:
            data.train_x, data.train_y = data.train_x[:0], data.train_y[:0]
        if client_id == 1:
            data.test_x, data.test_y = data.test_x[:0], data.test_y[:0]
        return data

    monkeypatch.setattr(simulation, "client_data", client_data)


@pytest.mark.parametrize("algorithm", ["fd", "fedproto", "fedgh", "pfedlora"])
def test_empty_splits_are_skipped_and_left_out_of_the_mean(algorithm, empty_splits, tmp_path):
    lines: list[str] = []
    summary = run(build_config({**SMALL, "algorithm": algorithm}), tmp_path / "run", log=lines.append)
    events = (tmp_path / "run" / "events.log").read_text()
    assert "client 0: no training samples" in events and "client 1: empty test split" in events
    assert summary["client_accuracies"][1] is None and summary["clients_without_test"] == 1
    measured = [a for a in summary["client_accuracies"] if a is not None]
    assert summary["final_accuracy"] == pytest.approx(sum(measured) / 4)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["client_accuracies"][1] is None
