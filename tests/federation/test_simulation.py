"""End-to-end runs of the in-process simulator on the bundled digits data."""

import csv
import json

import pytest
import torch
import yaml

from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.simulation import run, sample_clients

# 5 clients (one per CNN), pathological 2 classes each; small enough for the suite.
SMALL = {"num_clients": 5, "rounds": 6, "train": {"batch_size": 32}}


def _metrics(path):
    with open(path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = run(build_config(SMALL), out, log=lambda _: None)
    return out, summary


def test_quickstart_scale_run_learns_and_writes_the_run_directory(small_run):
    out, summary = small_run
    # measured: 95.0% mean accuracy after 6 rounds (2-class clients, chance is ~50%)
    assert summary["final_accuracy"] >= 80.0
    rows = _metrics(out)
    assert [int(r["round"]) for r in rows] == list(range(1, 7))
    # the summary is read off the metrics rows: final = last row, best = the highest row and its round
    means = [float(r["mean_acc"]) for r in rows]
    assert summary["final_accuracy"] == pytest.approx(means[-1])
    assert summary["best_accuracy"] == pytest.approx(max(means))
    assert summary["best_round"] == means.index(max(means)) + 1
    assert summary["final_accuracy"] == pytest.approx(sum(summary["client_accuracies"]) / 5)
    assert summary["clients_without_test"] == 0
    assert set(rows[0]) >= {"round", "mean_acc", "std_acc", "min_acc", "max_acc", "wall_s"}
    for key in ("algorithm", "dataset", "num_clients", "rounds", "final_accuracy", "best_accuracy",
                "best_round", "wall_seconds", "local_model_parameters", "adapter_parameters"):
        assert key in summary
    assert summary["local_model_parameters"]["cnn1"] > summary["local_model_parameters"]["cnn5"] > summary["adapter_parameters"]
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]
    assert yaml.safe_load((out / "config.yaml").read_text())["num_clients"] == 5
    partition = json.loads((out / "partition.json").read_text())
    assert len(partition["clients"] if "clients" in partition else partition) == 5


def test_same_config_and_seed_give_identical_metrics(small_run, tmp_path):
    out, _ = small_run
    run(build_config(SMALL), tmp_path / "again", log=lambda _: None)
    first = [{k: v for k, v in r.items() if k != "wall_s"} for r in _metrics(out)]
    second = [{k: v for k, v in r.items() if k != "wall_s"} for r in _metrics(tmp_path / "again")]
    assert first == second


def test_non_empty_run_directory_is_not_overwritten(small_run):
    out, _ = small_run
    before = (out / "metrics.csv").read_text()
    with pytest.raises(UserError, match="not empty"):
        run(build_config(SMALL), out, log=lambda _: None)
    assert (out / "metrics.csv").read_text() == before


def test_client_sampling_is_seeded_and_sized_by_fraction():
    config = build_config({"num_clients": 20, "fraction": 0.25})
    chosen = sample_clients(config, 3)
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert chosen == sample_clients(config, 3)
    assert any(sample_clients(config, r) != chosen for r in range(4, 10))


def test_validation_split_is_carved_from_training_data_and_labels_noised_only_in_training():
    from pfedlora.federation.simulation import Federation

    clean = Federation.build(build_config({"num_clients": 5}))
    tuned = Federation.build(build_config({"num_clients": 5, "dataset": {"validation_fraction": 0.2, "label_noise": 0.4}}))
    for before, after in zip(clean.clients, tuned.clients):
        assert after.num_train + after.test_y.shape[0] == before.num_train
        assert abs(after.test_y.shape[0] - 0.2 * before.num_train) <= 1
        # evaluation images are training images of this client, disjoint from what it trains on
        train_rows = {tuple(r.flatten().tolist()) for r in after.train_x}
        assert not any(tuple(r.flatten().tolist()) in train_rows for r in after.test_x)
        assert set(after.test_y.tolist()) <= set(before.train_y.tolist())  # clean labels, own classes
    noisy_labels = sum(int((~torch.isin(c.train_y, c.test_y.unique())).sum()) for c in tuned.clients)
    assert noisy_labels > 0


def test_participation_counts_clients_ever_selected():
    from pfedlora.config import build_config
    from pfedlora.federation.simulation import participation, sample_clients

    config = build_config({}, ["num_clients=20", "fraction=0.1", "rounds=3"])
    chosen = sorted({k for r in (1, 2, 3) for k in sample_clients(config, r)})
    accuracies = [float(k) for k in range(20)]
    result = participation(config, accuracies)
    assert result["clients_ever_selected"] == len(chosen) <= 6
    assert result["selected_clients_final_accuracy"] == sum(chosen) / len(chosen)
    assert participation(config, [])["selected_clients_final_accuracy"] is None


@pytest.mark.parametrize("validation_fraction", [0.0, 0.25])
def test_raw_uint8_images_give_the_same_run_as_images_normalised_up_front(tmp_path, monkeypatch, validation_fraction):
    """CIFAR-style images stay uint8 and are normalised per client (training) or per batch
    (evaluation); the run must equal, metric for metric, one on the whole split normalised first."""
    import numpy as np

    import pfedlora.federation.simulation as simulation
    from pfedlora.data.datasets import ArrayDataset, _apply_norm

    rng = np.random.default_rng(0)
    images = {split: torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
              for split, n in (("train", 240), ("test", 80))}
    labels = {split: torch.from_numpy(rng.integers(0, 4, len(images[split])).astype(np.int64)) for split in images}
    mean, std = [120.5, 101.25, 99.0], [60.0, 55.5, 70.25]

    def raw_dataset(*args, **kwargs):
        return ArrayDataset("cifar10", images["train"], labels["train"], images["test"], labels["test"], 4,
                            list("abcd"), mean=mean, std=std)

    def normalised_dataset(*args, **kwargs):
        norm = lambda x: _apply_norm(x, torch.tensor(mean), torch.tensor(std))  # noqa: E731
        return ArrayDataset("cifar10", norm(images["train"]), labels["train"], norm(images["test"]), labels["test"],
                            4, list("abcd"))

    config = build_config({"num_clients": 4, "rounds": 2, "train": {"batch_size": 16, "eval_batch_size": 24},
                           "partition": {"kind": "pathological", "classes_per_client": 2},
                           "dataset": {"validation_fraction": validation_fraction}})
    runs = []
    for name, loader in (("raw", raw_dataset), ("normalised", normalised_dataset)):
        monkeypatch.setattr(simulation, "load_dataset", loader)
        run(config, tmp_path / name, log=lambda _: None)
        runs.append([{k: v for k, v in row.items() if k != "wall_s"} for row in _metrics(tmp_path / name)])
    assert runs[0] == runs[1]
    monkeypatch.setattr(simulation, "load_dataset", raw_dataset)
    client = simulation.Federation.build(config).clients[0]
    assert client.test_x.dtype == torch.uint8 and client.train_x.dtype == torch.float32
