"""``dataset.name: image_folder``: a folder of images of any size and mode, classes by sub-folder.

Layouts (``dataset.path``):

* ``DIR/{train,test}/<class>/<image>``: the official split; the folder names are
  ``dataset.split_train`` / ``dataset.split_test`` (default ``train`` / ``test``; e.g.
  ``20news-bydate-train``);
* ``DIR/<class>/<image>`` (or ``DIR/<split_train>/<class>/<image>`` with ``dataset.split_test``
  null): no test split given; a seeded, per-class ``dataset.test_fraction`` of each class is held
  out for test (``seed``).

Classes are the train class folders in sorted order. Sizes and modes follow
:mod:`pfedlora.data.images` (``dataset.image_size``, ``dataset.image_fit``). Decoded pixels are
cached like CIFAR's (``dataset.cache_dir``), keyed by the folder's fingerprint and those options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pfedlora.data.arrays import ArrayDataset
from pfedlora.data.cache import cached_arrays, path_fingerprint
from pfedlora.data.images import channels_of, decode_images, image_dataset, is_image_name, native_size
from pfedlora.errors import UserError

_CACHE_VERSION = 1
LAYOUT_HELP = ("accepted: a directory {train,test}/<class>/<image> (folder names: dataset.split_train, "
               "dataset.split_test) or <class>/<image> (any size; dataset.image_size)")


def visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def class_images(folder: Path) -> dict[str, list[Path]]:
    """``{class: [image paths]}`` of ``folder/<class>/<image>`` (images in sorted order)."""
    return {d.name: [f for f in visible(d) if f.is_file() and is_image_name(f.name)]
            for d in visible(folder) if d.is_dir()}


def split_per_class(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean test mask holding out round(test_fraction x n) of each class (at least one when the
    class has two or more samples, never all of them)."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        take = min(len(index) - 1, max(1 if len(index) > 1 else 0, int(round(test_fraction * len(index)))))
        test[rng.permutation(index)[:take]] = True
    return test


def labelled(by_class: dict[str, list[Path]], class_names: list[str]) -> tuple[list[tuple[str, Path]], np.ndarray]:
    index = {c: i for i, c in enumerate(class_names)}
    items = [(str(f), f) for c in class_names for f in by_class.get(c, [])]
    labels = np.array([index[c] for c in class_names for _ in by_class.get(c, [])], dtype=np.int64)
    return items, labels


def load_image_folder(path: str | None, options: Any, *, cache_dir: str | None, seed: int) -> ArrayDataset:
    if path is None or str(path).strip() == "":
        raise UserError(f"dataset.path is required for image_folder; {LAYOUT_HELP}")
    source = Path(path).expanduser()
    if not source.is_dir():
        raise UserError(f"dataset.path {source} is not a directory; {LAYOUT_HELP}")
    image_size, fit = options.image_size, options.image_fit
    train_name, test_name = str(getattr(options, "split_train", "train")), getattr(options, "split_test", "test")
    has_train = (source / train_name).is_dir()
    split_given = has_train and test_name is not None
    # no test split: hold out a share of DIR/<class>/ (or of DIR/<split_train>/<class>/ with split_test null)
    pool = source / train_name if has_train else source
    if not has_train and train_name != "train":  # a named folder that is missing is a typo, not a layout
        raise UserError(f"{source}: no folder {train_name}/ (dataset.split_train); its folders are "
                        f"{', '.join(p.name for p in visible(source) if p.is_dir()) or 'none'}")
    key = f"v{_CACHE_VERSION}|image_folder|{path_fingerprint(source)}|{image_size}|{fit}"
    if (train_name, test_name) != ("train", "test"):
        key += f"|splits={train_name}/{test_name}"  # default names keep the keys of existing caches
    if not split_given:
        key += f"|{options.test_fraction}|{seed}"

    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if split_given:
            if not (source / test_name).is_dir():
                raise UserError(f"{source}: has {train_name}/ but no {test_name}/ (dataset.split_test); set "
                                f"dataset.split_test to the test folder's name, or null to hold out "
                                f"dataset.test_fraction; {LAYOUT_HELP}")
            train, test = class_images(source / train_name), class_images(source / test_name)
            class_names = sorted(c for c, files in train.items() if files)
            extra = sorted(c for c, files in test.items() if files and c not in class_names)
            if extra:
                raise UserError(f"{source}: test classes {extra} have no training images; test classes must be "
                                "a subset of train classes")
            train_items, train_y = labelled(train, class_names)
            test_items, test_y = labelled(test, class_names)
        else:
            by_class = class_images(pool)
            class_names = sorted(c for c, files in by_class.items() if files)
            items, labels = labelled(by_class, class_names)
            test_mask = split_per_class(labels, options.test_fraction, np.random.default_rng([seed, 19]))
            train_items = [it for it, t in zip(items, test_mask) if not t]
            test_items = [it for it, t in zip(items, test_mask) if t]
            train_y, test_y = labels[~test_mask], labels[test_mask]
        if not train_items:
            raise UserError(f"{source}: no images found; {LAYOUT_HELP}")
        channels = channels_of(train_items + test_items)
        first = decode_images(train_items[:1], channels=channels, image_size=image_size, fit=fit)
        native = None if image_size is not None else native_size(train_items)
        arrays = {
            "train_x": decode_images(train_items, channels=channels, image_size=image_size, fit=fit, native=native,
                                     label=f"{source} (train)"),
            "train_y": train_y,
            "test_x": decode_images(test_items, channels=channels, image_size=image_size, fit=fit, native=native,
                                    label=f"{source} (test)")
            if test_items else np.zeros((0, *first.shape[1:]), dtype=np.uint8),
            "test_y": test_y,
        }
        return arrays, {"class_names": class_names}

    arrays, meta = cached_arrays("image_folder", key, cache_dir, build)
    return image_dataset("image_folder", arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                         meta["class_names"], fit=fit)

