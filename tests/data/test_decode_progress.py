"""Large image folders are decoded on every core with progress on stderr, into the same array."""

import numpy as np

import pfedlora.data.images as images
from pfedlora.data.images import decode_images
from tests.byod_files import write_image_folder


def test_parallel_decoding_gives_the_serial_array_and_says_what_it_does(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "data", {"train": 45})
    items = [(str(p), p) for p in sorted((root / "train").rglob("*.png"))]
    serial = decode_images(items, channels=1, image_size=32)
    capsys.readouterr()
    monkeypatch.setattr(images, "PARALLEL_MIN_IMAGES", 10)
    monkeypatch.setattr(images, "_decode_workers", lambda: 2)  # forked workers even on a one-core machine
    parallel = decode_images(items, channels=1, image_size=32, label="data (train)")
    np.testing.assert_array_equal(parallel, serial)
    err = capsys.readouterr().err  # not a terminal here: a line before and a line after
    assert "decoding 45 images of data (train) on 2 processes" in err
    assert "decoded 45 images of data (train) in" in err


def test_a_corrupt_image_in_a_worker_is_still_one_line(tmp_path, monkeypatch):
    import pytest

    from pfedlora.errors import UserError

    root = write_image_folder(tmp_path / "data", {"train": 20})
    bad = sorted((root / "train").rglob("*.png"))[7]
    bad.write_bytes(b"not a png")
    items = [(str(p), p) for p in sorted((root / "train").rglob("*.png"))]
    monkeypatch.setattr(images, "PARALLEL_MIN_IMAGES", 10)
    monkeypatch.setattr(images, "_decode_workers", lambda: 2)
    with pytest.raises(UserError, match="corrupt or unreadable image"):
        decode_images(items, channels=1, image_size=32, label="data (train)")
