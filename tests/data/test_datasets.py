"""Tests for pfedlora.data.datasets."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import pfedlora.data.datasets as ds
from pfedlora.data import ArrayDataset, load_dataset
from pfedlora.errors import UserError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- helpers


def _rand_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10_py(root: Path, per_batch: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": _rand_images(rng, per_batch), b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": _rand_images(rng, 3), b"labels": [0, 5, 9]}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def make_cifar100_py(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    train = {b"data": _rand_images(rng, 6), b"fine_labels": [0, 1, 2, 99, 50, 3], b"coarse_labels": [0] * 6}
    test = {b"data": _rand_images(rng, 2), b"fine_labels": [99, 0], b"coarse_labels": [0, 0]}
    meta = {b"fine_label_names": [f"c{i:03d}".encode() for i in range(100)], b"coarse_label_names": [b"x"]}
    for name, obj in (("train", train), ("test", test), ("meta", meta)):
        (folder / name).write_bytes(pickle.dumps(obj))
    return folder


def make_tar(src: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tf:
        tf.add(src, arcname=arcname if arcname is not None else src.name)
    return archive


def make_image_folder(root: Path, classes=("cat", "airplane", "dog"), n_train: int = 3, n_test: int = 2) -> Path:
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(arr).save(d / f"{i:04d}.{ext}")
    (root / "README.md").write_text("ignore me")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------- digits


def test_digits_shapes_stratified_normalized() -> None:
    d = load_dataset("digits", seed=0)
    assert isinstance(d, ArrayDataset)
    assert d.train_x.shape[1:] == (1, 32, 32) and d.input_shape == (1, 32, 32)
    assert len(d.train_x) + len(d.test_x) == 1797
    assert len(d.test_x) == pytest.approx(0.25 * 1797, abs=1)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.class_names == [str(i) for i in range(10)]
    tr = torch.bincount(d.train_y, minlength=10).double() / len(d.train_y)
    te = torch.bincount(d.test_y, minlength=10).double() / len(d.test_y)
    assert torch.allclose(tr, te, atol=0.01)
    assert abs(float(d.train_x.mean())) < 1e-4
    assert float(d.train_x.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_seed_changes_split() -> None:
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.train_x, c.train_x)


def test_unknown_name() -> None:
    with pytest.raises(UserError, match="digits, cifar10, cifar100"):
        load_dataset("mnist")


# ---------------------------------------------------------------- official python layout


def _check_cifar10_fake(d: ArrayDataset, folder: Path) -> None:
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (3, 3, 32, 32)
    assert d.class_names == CIFAR10_NAMES and d.num_classes == 10
    assert d.test_y.tolist() == [0, 5, 9]
    # Pixel layout: CHW from the row-major [3072] vector, kept raw (uint8), normalized with train stats.
    assert d.train_x.dtype == torch.uint8 and torch.equal(d.train_x[0].flatten(), torch.from_numpy(
        pickle.loads((folder / "data_batch_1").read_bytes())[b"data"][0].astype(np.uint8)))
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"]
    all_train = np.concatenate([pickle.loads((folder / f"data_batch_{i}").read_bytes())[b"data"] for i in range(1, 6)])
    x = all_train.reshape(-1, 3, 32, 32).astype(np.float64)
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    expected = (raw[0].reshape(3, 32, 32) - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(d.normalize(d.train_x[:1])[0].numpy(), expected, atol=1e-4)
    assert abs(float(d.normalize(d.train_x).mean())) < 1e-4


@pytest.mark.parametrize("as_parent", [True, False])
def test_cifar10_python_dir(tmp_path: Path, cache: Path, as_parent: bool) -> None:
    folder = make_cifar10_py(tmp_path / "data")
    d = load_dataset("cifar10", folder.parent if as_parent else folder, cache_dir=cache)
    _check_cifar10_fake(d, folder)


def test_cifar10_python_targz(tmp_path: Path, cache: Path) -> None:
    folder = make_cifar10_py(tmp_path / "data")
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    d = load_dataset("CIFAR-10", str(archive), cache_dir=cache)
    _check_cifar10_fake(d, folder)


def test_cifar100_python_dir_and_targz(tmp_path: Path, cache: Path) -> None:
    folder = make_cifar100_py(tmp_path / "data")
    for src in (tmp_path / "data", make_tar(folder, tmp_path / "c100.tar.gz")):
        d = load_dataset("cifar100", src, cache_dir=cache)
        assert d.num_classes == 100 and d.class_names[99] == "c099"
        assert d.train_y.tolist() == [0, 1, 2, 99, 50, 3] and d.test_y.tolist() == [99, 0]
        assert d.train_x.shape == (6, 3, 32, 32)


def test_cifar_name_mismatch(tmp_path: Path, cache: Path) -> None:
    make_cifar100_py(tmp_path / "data")
    with pytest.raises(UserError, match="cifar-100-python"):
        load_dataset("cifar10", tmp_path / "data", cache_dir=cache)


def test_malicious_pickle_rejected(tmp_path: Path, cache: Path) -> None:
    folder = make_cifar10_py(tmp_path / "data")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", folder, cache_dir=cache)


def test_missing_batch_file(tmp_path: Path, cache: Path) -> None:
    folder = make_cifar10_py(tmp_path / "data")
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", folder, cache_dir=cache)


# ---------------------------------------------------------------- image-folder layout


def _check_images(d: ArrayDataset) -> None:
    assert d.class_names == ["airplane", "cat", "dog"]
    assert d.train_x.shape == (9, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert d.test_y.tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_dir(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "wrap" / "imgs")
    _check_images(load_dataset("cifar10", root, cache_dir=cache))
    # A directory wrapping a single top-level folder works too.
    _check_images(load_dataset("cifar10", tmp_path / "wrap", cache_dir=cache))


def test_image_folder_png_pixels_exact(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    d = load_dataset("cifar10", root, cache_dir=cache)
    px = np.asarray(Image.open(root / "train" / "airplane" / "0001.png")).transpose(2, 0, 1).astype(np.float64)
    raw = np.stack(
        [np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "train").glob("*/*.*"))]
    ).astype(np.float64)
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    expected = (px - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(d.normalize(d.train_x[1:2])[0].numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
def test_image_folder_archive_and_cache(tmp_path: Path, cache: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "src" / "mycifar")
    archive = make_tar(root, tmp_path / f"mycifar{suffix}")
    first = load_dataset("cifar10", archive, cache_dir=cache)
    _check_images(first)
    assert len(list(cache.rglob("meta.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(ds, "_decode_image", boom)
    second = load_dataset("cifar10", archive, cache_dir=cache)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.class_names == first.class_names


def test_archive_without_top_folder(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    archive = make_tar(root, tmp_path / "flat.tar.gz", arcname=".")
    _check_images(load_dataset("cifar10", archive, cache_dir=cache))


def test_corrupt_cache_is_rebuilt(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    first = load_dataset("cifar10", root, cache_dir=cache)
    (npy,) = cache.rglob("train_x.npy")
    npy.write_bytes(b"garbage")
    second = load_dataset("cifar10", root, cache_dir=cache)
    assert torch.equal(first.train_x, second.train_x)
    assert np.load(npy).shape == (9, 3, 32, 32)  # rewritten


def test_cache_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "imgs")
    monkeypatch.setenv("PFEDLORA_CACHE", str(tmp_path / "envcache"))
    load_dataset("cifar10", root)
    assert len(list((tmp_path / "envcache").rglob("meta.json"))) == 1


def test_cache_invalidated_when_source_changes(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    load_dataset("cifar10", root, cache_dir=cache)
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "train" / "cat" / "0099.png")
    d = load_dataset("cifar10", root, cache_dir=cache)
    assert len(d.train_y) == 10


# ---------------------------------------------------------------- errors


def test_path_required(cache: Path) -> None:
    with pytest.raises(UserError, match="dataset.path is required"):
        load_dataset("cifar10", None, cache_dir=cache)


def test_missing_path(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="nope") as exc:
        load_dataset("cifar10", missing, cache_dir=cache)
    assert "cifar-10-batches-py" in str(exc.value) and "\n" not in str(exc.value)


def test_download_failure_is_user_error(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    calls = []

    def fail(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(ds.urllib.request, "urlopen", fail)
    with pytest.raises(UserError, match="could not download .*cifar-10-python.tar.gz.*offline"):
        load_dataset("cifar10", tmp_path / "dl", cache_dir=cache, download=True)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert not list((tmp_path / "dl").glob("*"))  # no partial file left
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "dl2", cache_dir=cache, download=False)
    assert len(calls) == 1


def test_download_success(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_cifar10_py(tmp_path / "src")
    payload = make_tar(folder, tmp_path / "payload.tar.gz").read_bytes()
    monkeypatch.setattr(ds.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    # a small stand-in for the official archive: its own SHA-256 (tests/data/test_download.py checks the real one)
    import dataclasses
    import hashlib

    monkeypatch.setitem(ds._SPECS, "cifar10", dataclasses.replace(ds._SPECS["cifar10"],
                                                                 sha256=hashlib.sha256(payload).hexdigest()))
    d = load_dataset("cifar10", tmp_path / "dl", cache_dir=cache, download=True)
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()
    _check_cifar10_fake(d, folder)


def test_wrong_layout(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "junk" / "stuff").mkdir(parents=True)
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="junk"):
        load_dataset("cifar10", tmp_path / "junk", cache_dir=cache)
    with tarfile.open(tmp_path / "wrong.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "junk", arcname="junk")
    with pytest.raises(UserError, match="wrong.tar.gz"):
        load_dataset("cifar10", tmp_path / "wrong.tar.gz", cache_dir=cache)


def test_not_an_archive(tmp_path: Path, cache: Path) -> None:
    bad = tmp_path / "data.tar.gz"
    bad.write_bytes(b"this is not a tar file at all" * 10)
    with pytest.raises(UserError, match="data.tar.gz.*corrupt"):
        load_dataset("cifar10", bad, cache_dir=cache)


def test_truncated_archive(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", n_train=20)
    whole = make_tar(root, tmp_path / "whole.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="cut.tar.gz"):
        load_dataset("cifar10", cut, cache_dir=cache)
    assert not list(cache.rglob("meta.json"))


def test_corrupt_image(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    bad = root / "train" / "dog" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(UserError, match="0000.jpg"):
        load_dataset("cifar10", root, cache_dir=cache)
    archive = make_tar(root, tmp_path / "bad.tar.gz")
    with pytest.raises(UserError, match=r"bad.tar.gz:imgs/train/dog/0000.jpg"):
        load_dataset("cifar10", archive, cache_dir=cache)


def test_wrong_image_size(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    Image.new("RGB", (28, 28)).save(root / "train" / "cat" / "0000.jpg")
    with pytest.raises(UserError, match=r"0000.jpg.*28x28.*32x32"):
        load_dataset("cifar10", root, cache_dir=cache)


def test_test_class_without_train(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    (root / "test" / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(root / "test" / "zebra" / "0.png")
    with pytest.raises(UserError, match="zebra"):
        load_dataset("cifar10", root, cache_dir=cache)


# ---------------------------------------------------------------- the real CIFAR-10 archive


def _real_archive() -> Path:
    env = os.environ.get("PFEDLORA_DATA_DIR")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return (base / "cifar10-jpeg.tar.gz").resolve()


@pytest.fixture(scope="module")
def real_cifar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, ArrayDataset]]:
    archive = _real_archive()
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {archive}: put the shared data there or set PFEDLORA_DATA_DIR")
    cache = tmp_path_factory.mktemp("cifar_cache")
    yield archive, cache, load_dataset("cifar10", archive, cache_dir=cache)
    shutil.rmtree(cache, ignore_errors=True)  # 180 MB; pytest keeps old temp dirs around


def test_real_cifar10(real_cifar: tuple[Path, Path, ArrayDataset]) -> None:
    _, _, d = real_cifar
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.class_names == CIFAR10_NAMES and d.num_classes == 10
    assert torch.bincount(d.train_y).tolist() == [5000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.train_x.dtype == torch.uint8  # a quarter of float32's memory; normalised per use
    m = d.normalize(d.train_x[::10]).mean(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros(3), atol=2e-2)


def test_real_cifar10_second_load_reads_the_cache(real_cifar, monkeypatch) -> None:
    # The speed of that load is measured by benchmarks/data_load.py, not asserted here.
    archive, cache, first = real_cifar
    import pfedlora.data.datasets as datasets

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second load decoded images instead of reading the cache")

    monkeypatch.setattr(datasets, "_decode_image", no_decoding)
    d = load_dataset("cifar10", archive, cache_dir=cache)
    assert torch.equal(d.test_x[:100], first.test_x[:100]) and torch.equal(d.train_y, first.train_y)
    meta = json.loads(next(cache.rglob("meta.json")).read_text())
    assert meta["class_names"] == CIFAR10_NAMES


def test_a_tar_member_declaring_more_than_the_cap_is_refused_before_extraction(tmp_path: Path, cache: Path,
                                                                               monkeypatch) -> None:
    """Issue 30: a .tar.gz batch of 4 MiB of zeros (a few KB on disk) over a cap lowered to 1 MiB is
    refused from the member's declared size, in one line, before it is inflated and unpickled."""
    from pfedlora.data import cache as cache_module

    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 4 << 20
        tf.addfile(info, io.BytesIO(bytes(4 << 20)))
    assert archive.stat().st_size < 64 << 10
    monkeypatch.setattr(cache_module, "memory_cap_bytes", lambda: 1 << 20)
    monkeypatch.setattr(ds, "_unpickle", lambda *a: pytest.fail("an oversized member was unpickled"))
    with pytest.raises(UserError, match=r"member 'cifar-10-batches-py/data_batch_1' is 4,194,304 bytes, over the cap"):
        load_dataset("cifar10", archive, cache_dir=cache)


def test_a_cache_entry_over_the_cap_or_with_a_false_header_is_rebuilt_unread(tmp_path: Path, monkeypatch) -> None:
    """A cached array is read only once its header agrees with the file and is within the memory cap:
    np.load allocates what a header declares, so a planted or damaged entry must not be loaded."""
    from pfedlora.data import cache as cache_module

    built = []

    def build(size: int):
        def make():
            built.append(size)
            return {"x": np.ones(size, dtype=np.float64)}, {"n": size}
        return make

    arrays, _ = cache_module.cached_arrays("t", "big", tmp_path, build(1 << 18))  # 2 MiB
    assert cache_module.cached_arrays("t", "big", tmp_path, build(1 << 18))[0]["x"].sum() == 1 << 18
    assert built == [1 << 18]  # the second call read the entry
    monkeypatch.setattr(cache_module, "memory_cap_bytes", lambda: 1 << 20)
    loads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a) or pytest.fail("np.load on an unchecked file"))
    cache_module.cached_arrays("t", "big", tmp_path, build(1 << 18))
    assert built == [1 << 18] * 2  # over the cap: rebuilt, not read
    monkeypatch.setattr(cache_module, "memory_cap_bytes", lambda: 1 << 30)
    entry = next((tmp_path / "t").iterdir())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)})
    (entry / "x.npy").write_bytes(header.getvalue() + bytes(8))  # declares 8 TiB, holds 8 bytes
    assert cache_module.cached_arrays("t", "big", tmp_path, build(1 << 18))[0]["x"].shape == (1 << 18,)
    assert built == [1 << 18] * 3 and loads == []
