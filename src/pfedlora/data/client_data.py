"""Data already split by client (``partition.kind: given``): PFLlib/HtFLlib ``.npz`` files and
per-client image folders.

* ``dataset.name: client_npz``: ``DIR/train/<k>.npz`` and ``DIR/test/<k>.npz``, the layout PFLlib
  and HtFLlib generate. Each file holds a pickled dict ``data`` = ``{"x": ..., "y": ...}``
  (``np.savez_compressed(f, data={"x": x, "y": y})``), or plain ``x`` and ``y`` arrays. ``x`` is
  float images ``[N, C, H, W]`` (or ``[N, H, W]``: one channel), used as they are (the generators
  normalise them already), or integer token ids ``[N, L]``, padded with 0 / truncated to
  ``dataset.max_length``; ``y`` holds integer labels. The pickle is read by a restricted unpickler
  that builds numpy arrays only, never running code from the file. ``DIR/config.json``, when
  present, gives ``num_classes`` (and ``vocab_size`` for token ids); otherwise the largest label
  (token id) + 1.
* ``dataset.name: client_folders``: ``DIR/<client>/{train,test}/<class>/<image>``; classes are the
  union of every client's class folders (train and test), sorted; sizes and modes as
  :mod:`pfedlora.data.images`.

Client order: the file stems / folder names sorted numerically when all are integers, else as
strings; pfedlora's client ``i`` is the ``i``-th. ``num_clients`` must equal the number found.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfedlora.data.arrays import ArrayDataset
from pfedlora.data.cache import NumpyOnlyUnpickler, cached_arrays, one_line, path_fingerprint
from pfedlora.data.cache import refuse_oversized as _refuse_oversized
from pfedlora.data.images import check_model_size, channels_of, decode_images, image_dataset, native_size
from pfedlora.data.image_folder import class_images, visible
from pfedlora.data.partition import ClientSplit
from pfedlora.data.text import TextSpec
from pfedlora.errors import UserError

NPZ_HELP = ("accepted: DIR/train/<k>.npz and DIR/test/<k>.npz per client, each with a pickled dict 'data' = "
            "{'x': float32 [N, C, H, W] or token ids [N, L], 'y': int labels [N]} (PFLlib/HtFLlib) or plain "
            "'x' and 'y' arrays; optional DIR/config.json with num_classes")
FOLDERS_HELP = "accepted: DIR/<client>/{train,test}/<class>/<image> (any image size; dataset.image_size)"
_CACHE_VERSION = 1


@dataclass
class GivenClients:
    """The clients a dataset names: ``names[i]`` is pfedlora's client ``i``; ``splits[i]`` indexes the
    concatenated train/test arrays."""

    source: str
    names: list[str]
    splits: list[ClientSplit]


def client_order(names: list[str]) -> list[str]:
    """Numerically when every name is an integer, else as strings."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def given_clients(source: str, names: list[str], train_sizes: list[int], test_sizes: list[int]) -> GivenClients:
    """Contiguous per-client index ranges of arrays concatenated in client order."""
    train_ends, test_ends = np.cumsum(train_sizes), np.cumsum(test_sizes)
    splits = [ClientSplit(np.arange(te - tn, te, dtype=np.int64), np.arange(se - sn, se, dtype=np.int64))
              for tn, te, sn, se in zip(train_sizes, train_ends, test_sizes, test_ends)]
    return GivenClients(source, list(names), splits)


def given_splits(dataset: Any, num_clients: int) -> list[ClientSplit]:
    """The clients of a dataset loaded for ``partition.kind: given``; their count must be ``num_clients``."""
    clients: GivenClients | None = dataset.clients
    if clients is None:
        raise UserError(f"partition.kind given: dataset {dataset.name} names no clients "
                        "(client_npz, client_folders, or table/hf with dataset.client_column)")
    found = len(clients.names)
    if found != num_clients:
        raise UserError(f"num_clients is {num_clients} but {clients.source} holds {found} clients "
                        f"({clients.names[0]} .. {clients.names[-1]}); set num_clients={found}")
    return clients.splits


# --------------------------------------------------------------------------- client_npz


def _read_entry(archive: zipfile.ZipFile, entry: str, where: str) -> Any:
    # the declared size bounds what zipfile inflates (it stops there and checks the CRC)
    _refuse_oversized(archive.getinfo(entry).file_size, f"member {entry!r} inflated", where)
    with archive.open(entry) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        if not dtype.hasobject:
            count = math.prod(shape)
            _refuse_oversized(count * dtype.itemsize, f"array {entry!r} of shape {list(shape)}", where)
            array = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype, count=count)
            return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
        value = NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
        value = value.item()
    return value


def read_client_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one client file, read without executing anything from it."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {name.removesuffix(".npy"): name for name in archive.namelist()}
            if "data" in entries:
                data = _read_entry(archive, entries["data"], where)
                if not isinstance(data, dict) or not {"x", "y"} <= set(data):
                    raise UserError(f"{where}: 'data' is not a dict with 'x' and 'y'; {NPZ_HELP}")
                x, y = data["x"], data["y"]
            elif "x" in entries and "y" in entries:
                x, y = _read_entry(archive, entries["x"], where), _read_entry(archive, entries["y"], where)
            else:
                raise UserError(f"{where}: holds {', '.join(sorted(entries)) or 'nothing'}, not 'data' or 'x' and 'y'; "
                                f"{NPZ_HELP}")
    except UserError:
        raise
    except Exception as exc:  # not a zip, truncated, a forbidden pickle, a bad header: never trusted
        raise UserError(f"{where}: not a readable client .npz ({one_line(exc)}); {NPZ_HELP}") from None
    x, y = _as_inputs(x, where), np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)  # labels stored as floats with integral values
        else:
            raise UserError(f"{where}: y must be integer labels [N], got {y.dtype} {list(y.shape)}")
    if len(x) != len(y):
        raise UserError(f"{where}: x has {len(x)} samples but y has {len(y)}; x and y need one row per sample")
    if len(y) and y.min() < 0:
        raise UserError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return x, y.astype(np.int64)


def _as_inputs(x: Any, where: str) -> np.ndarray:
    if isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.dtype == object):
        # PFLlib's text datasets store (token ids, length) pairs per sample
        try:
            x = np.stack([np.asarray(item[0] if isinstance(item, (tuple, list)) else item) for item in x]) \
                if len(x) else np.zeros((0, 1), dtype=np.int64)
        except (ValueError, TypeError, IndexError) as exc:
            raise UserError(f"{where}: x is not an array of samples ({one_line(exc)}); {NPZ_HELP}") from None
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and x.ndim in (3, 4):
        return x[:, None] if x.ndim == 3 else x
    if np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
        return x
    raise UserError(f"{where}: x is {x.dtype} {list(x.shape)}; accepted: float images [N, C, H, W] or [N, H, W], "
                    "or integer token ids [N, L]")


def _client_files(folder: Path, root: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{root}: missing {folder.name}/; {NPZ_HELP}")
    return {p.stem: p for p in visible(folder) if p.is_file() and p.suffix == ".npz"}


def load_client_npz(path: str | None, options: Any, *, max_length: int) -> ArrayDataset:
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for client_npz; {NPZ_HELP}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset.path {root} is not a directory; {NPZ_HELP}")
    train_files, test_files = _client_files(root / "train", root), _client_files(root / "test", root)
    if not train_files:
        raise UserError(f"{root / 'train'}: no <k>.npz client files; {NPZ_HELP}")
    for name in client_order(list(train_files)):
        if name not in test_files:
            raise UserError(f"client {name}: {train_files[name]} has no {root / 'test' / (name + '.npz')}; "
                            "every client needs a train and a test file")
    extra = sorted(set(test_files) - set(train_files))
    if extra:
        raise UserError(f"client {extra[0]}: {test_files[extra[0]]} has no {root / 'train' / (extra[0] + '.npz')}; "
                        "every client needs a train and a test file")
    settings = _npz_settings(root)
    names = client_order(list(train_files))
    parts = {split: [read_client_npz(files[n]) for n in names]
             for split, files in (("train", train_files), ("test", test_files))}
    first = parts["train"][0][0]
    is_text = np.issubdtype(first.dtype, np.integer)
    for split, files in (("train", train_files), ("test", test_files)):
        for name, (x, _) in zip(names, parts[split]):
            if np.issubdtype(x.dtype, np.integer) != is_text or (not is_text and x.shape[1:] != first.shape[1:]):
                raise UserError(f"{files[name]}: x is {x.dtype} {list(x.shape[1:])} per sample but "
                                f"{train_files[names[0]]} has {first.dtype} {list(first.shape[1:])}; every client "
                                "needs the same kind and shape of input")
    train_y = np.concatenate([y for _, y in parts["train"]])
    test_y = np.concatenate([y for _, y in parts["test"]])
    top = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1
    num_classes = int(settings.get("num_classes", top))
    if top > num_classes:
        raise UserError(f"{root}: labels go up to {top - 1} but config.json says num_classes {num_classes}")
    clients = given_clients(str(root), names, [len(y) for _, y in parts["train"]], [len(y) for _, y in parts["test"]])
    class_names = [str(c) for c in range(num_classes)]
    if is_text:
        xs = [_pad_ids(x, max_length) for split in ("train", "test") for x, _ in parts[split]]
        vocab = int(settings.get("vocab_size", max(int(x.max(initial=0)) for x in xs) + 1))
        split_at = len(names)
        return ArrayDataset(
            name="client_npz",
            train_x=torch.from_numpy(np.concatenate(xs[:split_at])), train_y=torch.from_numpy(train_y),
            test_x=torch.from_numpy(np.concatenate(xs[split_at:])), test_y=torch.from_numpy(test_y),
            num_classes=num_classes, class_names=class_names,
            text=TextSpec(vocab_size=max(vocab, 2), max_length=max_length, pad_id=0),
            clients=clients, preprocessing={"kind": "token_ids", "max_length": max_length, "pad_id": 0})
    train_x = _fit_tensor(np.concatenate([x for x, _ in parts["train"]]), options)
    test_x = _fit_tensor(np.concatenate([x for x, _ in parts["test"]]), options)
    return ArrayDataset(
        name="client_npz", train_x=train_x, train_y=torch.from_numpy(train_y), test_x=test_x,
        test_y=torch.from_numpy(test_y), num_classes=num_classes, class_names=class_names, clients=clients,
        # inputs are used as stored (already normalised by whoever wrote the files)
        # their range is recorded so that predict can say what it expects; image files have no known
        # mapping to these units, so predict refuses them (pixel_scale null)
        preprocessing={"kind": "tensor", "channels": int(train_x.shape[1]), "image_size": int(train_x.shape[-1]),
                       "fit": options.image_fit, "source_size": int(first.shape[-1]),
                       "input": {"dtype": "float32", "pixel_scale": None, "resize": "torch-bilinear",
                                 "range": [float(train_x.min()), float(train_x.max())] if train_x.numel() else None}})


def _npz_settings(root: Path) -> dict[str, int]:
    path = root / "config.json"
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({one_line(exc)}); {NPZ_HELP}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object with num_classes; {NPZ_HELP}")
    settings = {}
    for key in ("num_classes", "vocab_size"):
        if key in document:
            value = document[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{path}: {key} must be a positive integer, got {value!r}")
            settings[key] = value
    return settings


def _pad_ids(x: np.ndarray, max_length: int) -> np.ndarray:
    out = np.zeros((len(x), max_length), dtype=np.int64)
    width = min(max_length, x.shape[1])
    out[:, :width] = x[:, :width]
    return out


def fit_tensor_images(x: torch.Tensor, image_size: int | None, fit: str) -> torch.Tensor:
    """Float images [N, C, H, W] at ``image_size`` (bilinear resize, or centred zero padding)."""
    if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    height, width = x.shape[-2:]
    if fit == "resize":
        return torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if height > image_size or width > image_size:
        raise UserError(f"images are {width}x{height}, larger than dataset.image_size {image_size}; image_fit pad "
                        "never shrinks: raise dataset.image_size or set dataset.image_fit resize")
    top, left = (image_size - height) // 2, (image_size - width) // 2
    return torch.nn.functional.pad(x, (left, image_size - width - left, top, image_size - height - top))


def _fit_tensor(x: np.ndarray, options: Any) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if options.image_size is None and tensor.shape[-1] != tensor.shape[-2]:
        raise UserError(f"images are {tensor.shape[-1]}x{tensor.shape[-2]}; non-square images need dataset.image_size")
    tensor = fit_tensor_images(tensor, options.image_size, options.image_fit)
    check_model_size(int(tensor.shape[-1]))
    return tensor


# --------------------------------------------------------------------------- client_folders


def load_client_folders(path: str | None, options: Any, *, cache_dir: str | None) -> ArrayDataset:
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for client_folders; {FOLDERS_HELP}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset.path {root} is not a directory; {FOLDERS_HELP}")
    image_size, fit = options.image_size, options.image_fit
    # each client's split folder names (dataset.split_train / split_test; default train / test)
    folder_of = {"train": str(getattr(options, "split_train", "train")), "test": getattr(options, "split_test", "test")}
    if folder_of["test"] is None:
        raise UserError("client_folders needs every client's test folder: set dataset.split_test (default test)")
    key = f"v{_CACHE_VERSION}|client_folders|{path_fingerprint(root)}|{image_size}|{fit}"
    if (folder_of["train"], folder_of["test"]) != ("train", "test"):
        key += f"|splits={folder_of['train']}/{folder_of['test']}"  # default names keep existing cache keys

    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        folders = {d.name: d for d in visible(root) if d.is_dir()}
        if not folders:
            raise UserError(f"{root}: no client folders; {FOLDERS_HELP}")
        names = client_order(list(folders))
        per_client = []
        for name in names:
            for split in ("train", "test"):
                if not (folders[name] / folder_of[split]).is_dir():
                    raise UserError(f"client {name}: {folders[name]} has no {folder_of[split]}/ (dataset.split_{split}); "
                                    f"{FOLDERS_HELP}")
            per_client.append((class_images(folders[name] / folder_of["train"]),
                               class_images(folders[name] / folder_of["test"])))
        if not any(files for train, _ in per_client for files in train.values()):
            raise UserError(f"{root}: no training images; {FOLDERS_HELP}")
        # one label space for the federation: every class folder of any client and split
        class_names = sorted({c for both in per_client for by_class in both for c, files in by_class.items() if files})
        index = {c: i for i, c in enumerate(class_names)}
        items: dict[str, list] = {"train": [], "test": []}
        labels: dict[str, list[int]] = {"train": [], "test": []}
        sizes: dict[str, list[int]] = {"train": [], "test": []}
        for name, (train, test) in zip(names, per_client):
            for split, by_class in (("train", train), ("test", test)):
                found = [(str(f), f, index[c]) for c in sorted(by_class) for f in by_class[c]]
                items[split] += [(where, f) for where, f, _ in found]
                labels[split] += [label for _, _, label in found]
                sizes[split].append(len(found))
        channels = channels_of(items["train"] + items["test"])
        native = None if image_size is not None else native_size(items["train"])
        arrays = {split: decode_images(items[split], channels=channels, image_size=image_size, fit=fit, native=native,
                                       label=f"{root} ({split})") for split in ("train", "test")}
        meta = {"class_names": class_names, "names": names, "train_sizes": sizes["train"], "test_sizes": sizes["test"]}
        return {"train_x": arrays["train"], "test_x": arrays["test"],
                "train_y": np.array(labels["train"], dtype=np.int64),
                "test_y": np.array(labels["test"], dtype=np.int64)}, meta

    arrays, meta = cached_arrays("client_folders", key, cache_dir, build)
    dataset = image_dataset("client_folders", arrays["train_x"], arrays["train_y"], arrays["test_x"],
                            arrays["test_y"], meta["class_names"], fit=fit)
    dataset.clients = given_clients(str(root), meta["names"], meta["train_sizes"], meta["test_sizes"])
    return dataset
