"""dataset.name image_folder: any size, any mode, with or without a train/test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from byod_files import digit_images, save_png, write_image_folder
from pfedlora.cli import main
from pfedlora.config import build_config
from pfedlora.data import load_dataset
from pfedlora.models.registry import MODEL_BUILDERS, build_model


def _load(root: Path, **dataset):
    options = build_config({"dataset": {"name": "image_folder", "path": str(root), **dataset}}).dataset
    return load_dataset("image_folder", root, cache_dir=root.parent / "cache", options=options)


def test_28x28_grayscale_folder_keeps_its_size_and_fits_every_model_in_the_pool(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mnist")
    dataset = _load(root)
    assert dataset.name == "image_folder" and dataset.input_shape == (1, 28, 28)
    assert dataset.class_names == ["class0", "class1", "class2"] and len(dataset.train_y) == 30
    # pixels stay uint8; model input is normalised with the training split's statistics
    train = dataset.normalize(dataset.train_x)
    assert dataset.train_x.dtype == torch.uint8
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-3
    for name in sorted(MODEL_BUILDERS):
        model = build_model(name, 1, dataset.num_classes, 28)
        assert model(dataset.normalize(dataset.test_x[:2])).shape == (2, 3), name


def test_pixels_are_the_files_pixels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mnist", {"train": 6, "test": 3})
    dataset = _load(root)
    mean, std = dataset.preprocessing["mean"], dataset.preprocessing["std"]
    from PIL import Image

    first = sorted((root / "train").glob(f"{dataset.class_names[0]}/*.png"))[0]
    pixels = torch.from_numpy(np.asarray(Image.open(first), dtype=np.float32))
    assert torch.equal(dataset.train_x[0, 0].float(), pixels)
    assert torch.allclose(dataset.normalize(dataset.train_x[:1])[0, 0], (pixels - mean[0]) / std[0], atol=1e-5)


def test_mixed_modes_become_rgb(tmp_path: Path) -> None:
    from PIL import Image

    root = write_image_folder(tmp_path / "mixed", {"train": 12, "test": 4}, modes=("L", "RGB", "RGBA", "P"))
    dataset = _load(root)
    assert dataset.input_shape == (3, 28, 28)
    files = [f for c in dataset.class_names for f in sorted((root / "train" / c).glob("*.png"))]
    assert {Image.open(f).mode for f in files} == {"L", "RGB", "RGBA", "P"}
    for row, f in zip(dataset.train_x, files):  # each image is its file converted to RGB (alpha dropped)
        expected = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
        assert torch.equal(row, expected)


def test_image_size_resizes_or_pads(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mnist", {"train": 6, "test": 3})
    assert _load(root, image_size=32).input_shape == (1, 32, 32)
    padded = _load(root, image_size=32, image_fit="pad")
    assert padded.input_shape == (1, 32, 32)
    # the 2-pixel border is the padding: zero pixels; the 28x28 inside is the image itself
    assert int(padded.train_x[:, :, :2].sum()) == 0 and int(padded.train_x[:, :, :, -2:].sum()) == 0
    native = _load(root)
    assert torch.equal(padded.train_x[:, :, 2:30, 2:30], native.train_x)
    assert _load(root, image_size=16).input_shape == (1, 16, 16)


@pytest.mark.parametrize("setting, expected", [
    ({}, "set dataset.image_size"),
    ({"dataset.image_size": 24, "dataset.image_fit": "pad"}, "larger than dataset.image_size 24"),
    ({"dataset.image_size": 12}, "the image models need at least 16x16"),
])
def test_size_problems_exit_2_with_one_line(tmp_path: Path, capsys, setting: dict, expected: str) -> None:
    root = write_image_folder(tmp_path / "mixed", {"train": 6, "test": 3})
    images, _ = digit_images(1, 30)
    save_png(root / "train" / "class0" / "big.png", images[0])
    argv = ["run", "--set", "dataset.name=image_folder", "--set", f"dataset.path={root}", "--set", "num_clients=2",
            "--set", "partition.kind=iid", "--out", str(tmp_path / "run")]
    for key, value in setting.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err


def test_a_folder_without_split_is_split_per_class_by_seed(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "flat", {"all": 40})
    flat = root / "all"
    first = _load(flat)
    again = _load(flat)
    assert torch.equal(first.test_x, again.test_x)
    assert len(first.test_y) == pytest.approx(0.25 * 40, abs=3)
    assert sorted(set(first.test_y.tolist())) == [0, 1, 2]


def test_image_folder_run_records_its_name(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mnist", {"train": 40, "test": 12})
    out = tmp_path / "run"
    assert main(["run", "--set", "dataset.name=image_folder", "--set", f"dataset.path={root}", "--set",
                 "num_clients=2", "--set", "partition.kind=iid", "--set", "rounds=1", "--set",
                 "model_pool=[cnn5,resnet8]", "--set", "train.batch_size=8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "image_folder"
    assert json.loads((out / "dataset.json").read_text())["input_shape"] == [1, 28, 28]
