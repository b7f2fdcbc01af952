"""Predictions at the training scale (issue 37): an exported model maps every accepted raw input to
the units its training data had, whatever the source, or refuses it with one line.

Each source kind the library loads is checked the same way: its training images saved as PNG files
(what a user has) preprocess to exactly the model input the run used; float arrays in the training
data's units do too. The digits and CIFAR-10 clients are exported from real runs and must predict the
same classes from PNG files as from the training arrays.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pfedlora
from byod_files import digit_images, write_client_folders, write_client_npz, write_image_folder
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.data import load_dataset
from pfedlora.data.options import DatasetConfig
from pfedlora.errors import UserError
from pfedlora.export import _preprocess_images, input_spec
from pfedlora.federation.simulation import run


def _save_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    """uint8 images [N, C, H, W] (C 1 or 3) as PNG files, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        path = folder / f"{i:05d}.png"
        Image.fromarray(np.ascontiguousarray(array)).save(path)
        paths.append(path)
    return paths


def _digits_as_png(images: np.ndarray) -> np.ndarray:
    """scikit-learn's 0..16 digits as the 8-bit images a user saves: [N, 1, 8, 8] uint8."""
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None]


def _model_input(dataset, x: torch.Tensor) -> torch.Tensor:
    return dataset.normalize(x)


# ----------------------------------------------------------------------------- every source kind


def test_digits_png_files_and_0_to_16_arrays_reach_the_training_scale(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    dataset = load_dataset("digits", seed=0)
    spec = input_spec(dataset.preprocessing)
    assert spec["dtype"] == "float32" and spec["range"] == [0.0, 16.0]  # the export says what it expects
    bunch = load_digits()
    idx_train, _ = train_test_split(np.arange(len(bunch.target)), test_size=0.25, random_state=0, stratify=bunch.target)
    raw = bunch.images[idx_train[:300]]  # the training arrays: float 0..16, 8x8
    expected = _model_input(dataset, dataset.train_x[:300])
    shape = dataset.input_shape
    from_arrays = _preprocess_images(raw, dataset.preprocessing, shape)
    assert torch.equal(from_arrays, expected)  # the same resize and normalisation as training, bit for bit
    files = _save_pngs(tmp_path / "png", _digits_as_png(raw))
    from_files = _preprocess_images(files, dataset.preprocessing, shape)
    # 8-bit rounding of 0..16 values: at most half a grey level (16/255/2 units) before normalisation
    assert float(from_files.max()) < 2.5 and float(from_files.min()) > -1.0  # training's range, not 16x it
    assert torch.allclose(from_files, expected, atol=0.5 * 16 / 255 / dataset.preprocessing["std"][0] + 1e-5)
    uint8 = _preprocess_images(_digits_as_png(raw), dataset.preprocessing, shape)
    assert torch.equal(uint8, from_files)


def _uint8_source_check(dataset, files: list[Path], rows: slice = slice(None)) -> None:
    expected = _model_input(dataset, dataset.train_x[rows])
    shape = dataset.input_shape
    assert input_spec(dataset.preprocessing)["dtype"] == "uint8"
    assert torch.equal(_preprocess_images(files, dataset.preprocessing, shape), expected)
    pixels = dataset.train_x[rows].numpy()
    assert torch.equal(_preprocess_images(pixels, dataset.preprocessing, shape), expected)
    floats = pixels.astype(np.float32)  # float arrays in the training units (0..255)
    assert torch.equal(_preprocess_images(floats, dataset.preprocessing, shape), expected)
    with pytest.raises(UserError, match="look like 0..1 images"):
        _preprocess_images(floats / 255.0, dataset.preprocessing, shape)


def test_cifar_official_pickles_png_files_reach_the_training_scale(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), b"labels": [i % 10] * 4}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                                                      b"labels": [0, 5, 9]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    dataset = load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    _uint8_source_check(dataset, _save_pngs(tmp_path / "png", dataset.train_x.numpy()))


def test_image_folder_png_files_reach_the_training_scale(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"train": 12, "test": 6}, size=20, modes=("L",))
    options = DatasetConfig(name="image_folder", path=str(root), image_size=32)
    dataset = load_dataset("image_folder", str(root), cache_dir=tmp_path / "cache", options=options)
    files = [f for c in dataset.class_names for f in sorted((root / "train" / c).glob("*.png"))]
    expected = _model_input(dataset, dataset.train_x)
    assert torch.equal(_preprocess_images(files, dataset.preprocessing, dataset.input_shape), expected)
    with pytest.raises(UserError, match="look like 0..1 images"):
        _preprocess_images(np.ones((2, 1, 32, 32), np.float32) * 0.5, dataset.preprocessing, dataset.input_shape)


def test_client_folders_png_files_reach_the_training_scale(tmp_path: Path) -> None:
    root = write_client_folders(tmp_path / "clients", clients=2, train=4, test=2, size=32)
    options = DatasetConfig(name="client_folders", path=str(root))
    dataset = load_dataset("client_folders", str(root), cache_dir=tmp_path / "cache", options=options)
    files = [f for k in ("c0", "c1") for c in dataset.class_names for f in sorted((root / k / "train" / c).glob("*.png"))]
    _uint8_source_check(dataset, files)


def test_table_image_column_png_files_reach_the_training_scale(tmp_path: Path) -> None:
    images, labels = digit_images(10, size=32)
    files = _save_pngs(tmp_path / "scans", images[:, None])
    for split, rows in (("train", range(0, 10)), ("test", range(0, 4))):
        with (tmp_path / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([["file", "finding"]] + [[f"scans/{files[i].name}", str(labels[i])] for i in rows])
    options = DatasetConfig(name="table", path=str(tmp_path), image_column="file", label_column="finding")
    dataset = load_dataset("table", str(tmp_path), options=options)
    _uint8_source_check(dataset, files)


def test_hf_image_dataset_png_files_reach_the_training_scale(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    images, labels = digit_images(8, size=32)
    files = _save_pngs(tmp_path / "png", images[:, None])
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    splits = {split: datasets.Dataset.from_dict({"img": [str(f) for f in files[rows]],
                                                 "label": [int(v) for v in labels[rows]]}, features=features)
              for split, rows in (("train", slice(0, 5)), ("test", slice(5, 8)))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hf"))
    options = DatasetConfig(name="hf", path=str(tmp_path / "hf"))
    dataset = load_dataset("hf", str(tmp_path / "hf"), options=options)
    _uint8_source_check(dataset, files[:5])


def test_client_npz_takes_its_stored_floats_and_refuses_image_files_with_one_line(tmp_path: Path) -> None:
    root = write_client_npz(tmp_path / "npz", clients=2, per_client=8, size=28)
    options = DatasetConfig(name="client_npz", path=str(root))
    dataset = load_dataset("client_npz", str(root), options=options)
    spec = input_spec(dataset.preprocessing)
    assert spec["pixel_scale"] is None and spec["range"][0] < 0  # PFLlib's (x - 0.5) / 0.5 units
    from pfedlora.data.client_data import read_client_npz

    x, _ = read_client_npz(root / "train" / "0.npz")
    assert torch.equal(_preprocess_images(x, dataset.preprocessing, dataset.input_shape), dataset.train_x[: len(x)])
    png = _save_pngs(tmp_path / "png", (np.zeros((1, 1, 28, 28)) + 128).astype(np.uint8))
    for raw in (png, np.zeros((1, 28, 28), np.uint8)):
        with pytest.raises(UserError, match="trained on float arrays") as caught:
            _preprocess_images(raw, dataset.preprocessing, dataset.input_shape)
        assert "\n" not in str(caught.value)


def test_out_of_range_floats_are_refused_with_one_line() -> None:
    dataset = load_dataset("digits", seed=0)
    for bad in (np.full((1, 8, 8), 200.0, np.float32), np.full((1, 8, 8), -50.0, np.float32),
                np.full((1, 8, 8), np.nan, np.float32)):
        with pytest.raises(UserError) as caught:
            _preprocess_images(bad, dataset.preprocessing, dataset.input_shape)
        assert "\n" not in str(caught.value) and "0..16" in str(caught.value)
    # preprocessed tensors are refused by predict and taken by the module itself
    with pytest.raises(UserError, match=r"model\(x\)"):
        _preprocess_images(dataset.normalize(dataset.train_x[:2]), dataset.preprocessing, dataset.input_shape)


# ----------------------------------------------------------------------------- exported clients


def _export_run(tmp_path: Path, document: dict, client: int = 0) -> pfedlora.PersonalizedClassifier:
    config = build_config({"num_clients": 2, "partition": {"kind": "iid"}, "train": {"batch_size": 32},
                           "model_pool": ["cnn5"], **document})
    out = tmp_path / "run"
    run(config, out, log=lambda _: None)
    assert main(["export", str(out), "--clients", str(client), "--out", str(tmp_path / "exported")]) == 0
    exported = json.loads((tmp_path / "exported" / f"client-{client}.json").read_text())
    assert exported["preprocessing"]["input"]["dtype"] in ("uint8", "float32")  # the JSON states its input
    return pfedlora.load_personalized(tmp_path / "exported" / f"client-{client}.json")


def test_exported_digits_client_predicts_png_files_as_the_training_arrays(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    model = _export_run(tmp_path, {"rounds": 5, "dataset": {"name": "digits"}})
    images = load_digits().images  # every digit, in scikit-learn's 0..16 units
    from_arrays = model.predict(images)
    from_files = model.predict(_save_pngs(tmp_path / "png", _digits_as_png(images)))
    assert len(set(from_arrays.tolist())) >= 5  # a trained model, not a constant
    assert float((from_arrays == torch.from_numpy(load_digits().target)).float().mean()) > 0.6
    # 8-bit files round 0..16 to 1/255ths of 16 (at most 0.03 units): only a tie can flip a class
    # (this run: none of 1,797; before predictions were at the training scale, about 16x too bright)
    with torch.inference_mode():
        top2 = model(model.preprocess(images)).softmax(dim=1).topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    differ = from_files != from_arrays
    assert int(differ.sum()) <= 2 and bool((margin[differ] < 0.01).all()), margin[differ]


def _cifar_archive() -> Path:
    env = os.environ.get("PFEDLORA_DATA_DIR")
    base = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return (base / "cifar10-jpeg.tar.gz").resolve()


@pytest.mark.slow
def test_exported_cifar10_client_predicts_png_files_as_the_training_arrays(tmp_path: Path) -> None:
    archive = _cifar_archive()
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {archive}: put the shared data there or set PFEDLORA_DATA_DIR")
    model = _export_run(tmp_path, {"rounds": 1, "dataset": {"name": "cifar10", "path": str(archive),
                                                            "max_train_samples": 400, "max_test_samples": 100}})
    dataset = load_dataset("cifar10", archive, max_train_samples=400, max_test_samples=100)
    pixels = dataset.train_x[:200].numpy()  # the training arrays: uint8 [N, 3, 32, 32]
    from_arrays = model.predict(pixels)
    assert torch.equal(from_arrays, model(dataset.normalize(dataset.train_x[:200])).argmax(dim=1))
    assert torch.equal(model.predict(_save_pngs(tmp_path / "png", pixels)), from_arrays)
    assert torch.equal(model.predict(pixels.astype(np.float32)), from_arrays)
