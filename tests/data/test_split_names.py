"""Split folder (and file) names are configurable: ``dataset.split_train`` / ``dataset.split_test``
(20 Newsgroups ships ``20news-bydate-train/`` and ``20news-bydate-test/``)."""

from pathlib import Path

import pytest

from pfedlora.config import build_config
from pfedlora.data import load_dataset
from pfedlora.errors import UserError
from tests.byod_files import write_client_folders, write_image_folder

SPLITS = ["dataset.split_train=20news-bydate-train", "dataset.split_test=20news-bydate-test"]


def _load(name: str, path: Path, *overrides: str):
    document = {"dataset": {"name": name, "path": str(path), "cache_dir": str(path.parent / "cache")}}
    if name.startswith("text"):
        document["model_pool"] = ["tf_d64_l2"]
    if name == "client_folders":
        document["partition"] = {"kind": "given"}
        document["num_clients"] = 3
    config = build_config(document, list(overrides))
    return load_dataset(name, str(path), cache_dir=config.dataset.cache_dir, seed=0,
                        options=config.dataset, max_length=config.dataset.max_length)


def test_image_folder_reads_named_split_folders(tmp_path):
    root = write_image_folder(tmp_path / "data", {"20news-bydate-train": 30, "20news-bydate-test": 12})
    with pytest.raises(UserError, match="test"):  # the default names are not there
        _load("image_folder", root)
    dataset = _load("image_folder", root, *SPLITS)
    assert (len(dataset.train_y), len(dataset.test_y)) == (30, 12)


def test_image_folder_with_split_test_null_holds_out_a_share_of_the_named_train_folder(tmp_path):
    root = write_image_folder(tmp_path / "data", {"all": 40})
    dataset = _load("image_folder", root, "dataset.split_train=all", "dataset.split_test=null",
                    "dataset.test_fraction=0.25")
    assert len(dataset.train_y) + len(dataset.test_y) == 40 and len(dataset.test_y) == 10


def test_a_named_split_folder_that_is_missing_is_one_line(tmp_path):
    root = write_image_folder(tmp_path / "data", {"train": 30, "test": 12})
    with pytest.raises(UserError, match=r"no folder trian/ \(dataset.split_train\); its folders are test, train"):
        _load("image_folder", root, "dataset.split_train=trian")


def _text_folder(root: Path, splits: tuple[str, str]) -> Path:
    for split, count in zip(splits, (12, 6)):
        for i in range(count):
            label = "sport" if i % 2 else "space"
            path = root / split / label / f"{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"a {label} message number {i}")
    return root


def test_text_folder_and_text_csv_read_named_splits(tmp_path):
    root = _text_folder(tmp_path / "news", ("20news-bydate-train", "20news-bydate-test"))
    dataset = _load("text_folder", root, *SPLITS)
    assert (len(dataset.train_y), len(dataset.test_y)) == (12, 6) and dataset.class_names == ["space", "sport"]
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    for split, count in (("fit", 8), ("heldout", 4)):
        rows = "".join(f"hello number {i},{i % 2}\n" for i in range(count))
        (csv_root / f"{split}.csv").write_text("text,label\n" + rows)
    with pytest.raises(UserError, match="missing train.csv"):
        _load("text_csv", csv_root)
    dataset = _load("text_csv", csv_root, "dataset.split_train=fit", "dataset.split_test=heldout")
    assert (len(dataset.train_y), len(dataset.test_y)) == (8, 4)


def test_client_folders_read_named_split_folders(tmp_path):
    root = write_client_folders(tmp_path / "clients")
    for client in root.iterdir():
        (client / "train").rename(client / "fit")
    with pytest.raises(UserError, match=r"has no train/ \(dataset.split_train\)"):
        _load("client_folders", root)
    dataset = _load("client_folders", root, "dataset.split_train=fit")
    assert len(dataset.train_y) == 3 * 12
