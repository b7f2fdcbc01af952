"""Writers of the bring-your-own-data layouts, for tests (each test builds its files in tmp_path).

Images are real: sklearn's 8x8 digits scaled up, so a model can learn from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def digit_images(n: int, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digits as uint8 [n, size, size] grayscale (0..255) and their labels, in a seeded order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))[:n]
    images = []
    for index in order:
        small = Image.fromarray((bunch.images[index] * (255 / 16)).astype(np.uint8), mode="L")
        images.append(np.asarray(small.resize((size, size), Image.BILINEAR)))
    return np.stack(images), np.asarray(bunch.target[order], dtype=np.int64)


def write_client_npz(root: Path, clients: int = 3, per_client: int = 24, size: int = 28, *, seed: int = 0,
                     num_classes: int | None = 10, plain: bool = False) -> Path:
    """PFLlib's layout: root/{train,test}/<k>.npz with data={'x': float32 [N,1,H,W], 'y': int64}."""
    images, labels = digit_images(clients * per_client, size, seed)
    x = ((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for k in range(clients):
        part = slice(k * per_client, (k + 1) * per_client)
        cut = per_client * 3 // 4
        for split, rows in (("train", slice(0, cut)), ("test", slice(cut, None))):
            cx, cy = x[part][rows], labels[part][rows]
            if plain:
                np.savez_compressed(root / split / f"{k}.npz", x=cx, y=cy)
            else:
                np.savez_compressed(root / split / f"{k}.npz", data={"x": cx, "y": cy})
    if num_classes is not None:
        (root / "config.json").write_text(json.dumps({"num_clients": clients, "num_classes": num_classes}))
    return root


def save_png(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode="L")
    if mode != "L":
        image = image.convert(mode)
    image.save(path)
    return path


def write_image_folder(root: Path, per_split: dict[str, int] | None = None, size: int = 28, *, seed: int = 0,
                       classes: int = 3, modes: tuple[str, ...] = ("L",)) -> Path:
    """root/{train,test}/<class>/<i>.png of digits 0..classes-1; image i in mode modes[i % len(modes)]."""
    per_split = per_split or {"train": 30, "test": 12}
    images, labels = digit_images(1797, size, seed)
    keep = labels < classes
    images, labels = images[keep], labels[keep]
    start = 0
    for split, count in per_split.items():
        for i in range(count):
            j = start + i
            save_png(root / split / f"class{labels[j]}" / f"{j:04d}.png", images[j], modes[i % len(modes)])
        start += count
    return root


def write_client_folders(root: Path, clients: int = 3, train: int = 12, test: int = 6, size: int = 28,
                         *, seed: int = 0) -> Path:
    """root/<client>/{train,test}/<class>/<image>.png, clients named c0, c1, ..."""
    images, labels = digit_images(clients * (train + test), size, seed)
    j = 0
    for k in range(clients):
        for split, count in (("train", train), ("test", test)):
            for _ in range(count):
                save_png(root / f"c{k}" / split / f"digit{labels[j]}" / f"{j:04d}.png", images[j])
                j += 1
    return root
