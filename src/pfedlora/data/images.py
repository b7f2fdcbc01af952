"""Decoding images of any size and mode into the uint8 arrays every image loader hands to the models.

Rules (docs/guide/data.md, "Bring your own data"):

* **Mode**: a dataset whose images are all grayscale (Pillow modes 1, L, LA, I, I;16, F) becomes one
  channel; any colour image (RGB, RGBA, P, CMYK, ...) makes the whole dataset three-channel RGB.
  Transparency is dropped (Pillow's ``convert``), never rejected.
* **Size**: ``dataset.image_size`` null keeps the native size, which every image must share.
  Otherwise every image becomes ``image_size`` x ``image_size``: ``image_fit: resize`` resizes it
  (bilinear; a non-square image is stretched), ``image_fit: pad`` centres it on a zero canvas (an
  image larger than ``image_size`` is refused: padding never shrinks).
* **Normalisation**: per-channel mean and std of the training pixels (0..255 units), as for CIFAR.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pfedlora.data.arrays import channel_stats, uint8_dataset
from pfedlora.data.cache import one_line
from pfedlora.errors import UserError

# the CNN family's two conv 5x5 + pool stages need at least this side (pfedlora.models.cnn)
MIN_IMAGE_SIZE = 16
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

# an image source: a file path, encoded bytes, or an already opened Pillow image
ImageSource = Any


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _open(source: ImageSource, where: str):
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        image.load()
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise UserError(f"{where}: corrupt or unreadable image ({one_line(exc)})") from None
    return image


def channels_of(images: Sequence[tuple[str, ImageSource]]) -> int:
    """1 when every image is grayscale, else 3 (reads headers only for files)."""
    from PIL import Image

    for where, source in images:
        if isinstance(source, Image.Image):
            mode = source.mode
        else:
            try:
                with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
                    mode = image.mode
            except Exception as exc:
                raise UserError(f"{where}: corrupt or unreadable image ({one_line(exc)})") from None
        if mode not in GRAYSCALE_MODES:
            return 3
    return 1


def _convert(image, channels: int):
    if channels == 1:
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # high bit-depth grayscale: scale to 0..255 by the image's own range
            array = np.asarray(image, dtype=np.float64)
            top = array.max() if array.max() > 255 else 255.0
            from PIL import Image

            return Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
        return image.convert("L")
    return image.convert("RGB")


def fit_image(image, image_size: int | None, fit: str, where: str):
    """``image`` at ``image_size`` x ``image_size`` by ``fit`` (resize or pad); unchanged when None."""
    from PIL import Image

    if image_size is None or image.size == (image_size, image_size):
        return image
    if fit == "resize":
        return image.resize((image_size, image_size), Image.BILINEAR)
    width, height = image.size
    if width > image_size or height > image_size:
        raise UserError(f"{where}: image is {width}x{height}, larger than dataset.image_size {image_size}; "
                        "image_fit pad never shrinks: raise dataset.image_size or set dataset.image_fit resize")
    canvas = Image.new(image.mode, (image_size, image_size), 0)
    canvas.paste(image, ((image_size - width) // 2, (image_size - height) // 2))
    return canvas


# below this many images decoding is quick enough in one process and without a progress display
PARALLEL_MIN_IMAGES = 2000


def decode_images(
    images: Sequence[tuple[str, ImageSource]],
    *,
    channels: int,
    image_size: int | None,
    fit: str = "resize",
    native: tuple[int, int] | None = None,
    label: str | None = None,
) -> np.ndarray:
    """uint8 [N, channels, S, S] from ``(location, source)`` pairs, by the module's rules.

    With ``image_size`` None every image must have the size ``native`` (or the first image's).
    ``label`` (e.g. the folder being read): at least :data:`PARALLEL_MIN_IMAGES` images are decoded on
    every core (forked processes, chunks in order, so the result is the same array) and progress is
    shown on stderr; 70,000 PNGs otherwise take a silent minute.
    """
    if label is None or len(images) < PARALLEL_MIN_IMAGES:
        return _decode_serial(images, channels=channels, image_size=image_size, fit=fit, native=native)
    if image_size is None and native is None:
        native = native_size(images)  # every chunk checks against the same size
    return _decode_parallel(images, label, channels=channels, image_size=image_size, fit=fit, native=native)


def _decode_workers() -> int:
    import multiprocessing
    import os

    if multiprocessing.current_process().daemon or "fork" not in multiprocessing.get_all_start_methods():
        return 1  # a daemon process cannot have children; without fork the sources would be pickled to spawn
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_parallel(images: Sequence[tuple[str, ImageSource]], label: str, **options: Any) -> np.ndarray:
    import sys
    import time
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    workers = _decode_workers()
    chunk = 500  # small enough for a progress display that moves, large enough to amortise the transfer
    starts = list(range(0, len(images), chunk))
    started = time.perf_counter()
    bar = tqdm(total=len(images), desc=f"decoding {label}", unit="img", file=sys.stderr, disable=None,
               dynamic_ncols=True, leave=False)
    if bar.disable:  # not a terminal (a log): one line before and one after
        print(f"decoding {len(images):,} images of {label} on {workers} process{'es' if workers > 1 else ''}",
              file=sys.stderr, flush=True)
    parts: list[np.ndarray] = []
    try:
        if workers <= 1:
            for start in starts:
                parts.append(_decode_serial(images[start:start + chunk], **options))
                bar.update(len(parts[-1]))
        else:
            import multiprocessing

            # forked: the workers see ``images`` without pickling it; they only decode (no torch)
            global _FORK_IMAGES
            _FORK_IMAGES = images
            try:
                with ProcessPoolExecutor(min(workers, len(starts)), mp_context=multiprocessing.get_context("fork")) as pool:
                    for part in pool.map(_decode_slice, [(start, start + chunk, options) for start in starts]):
                        parts.append(part)
                        bar.update(len(part))
            finally:
                _FORK_IMAGES = None
    finally:
        bar.close()
    if bar.disable:
        print(f"decoded {len(images):,} images of {label} in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
    return np.concatenate(parts)


_FORK_IMAGES: Sequence[tuple[str, ImageSource]] | None = None


def _decode_slice(task: tuple[int, int, dict[str, Any]]) -> np.ndarray:
    start, stop, options = task
    assert _FORK_IMAGES is not None
    return _decode_serial(_FORK_IMAGES[start:stop], **options)


def _decode_serial(
    images: Sequence[tuple[str, ImageSource]],
    *,
    channels: int,
    image_size: int | None,
    fit: str = "resize",
    native: tuple[int, int] | None = None,
) -> np.ndarray:
    out: np.ndarray | None = None
    for i, (where, source) in enumerate(images):
        image = _convert(_open(source, where), channels)
        if image_size is None:
            native = native or image.size
            if image.size != native:
                raise UserError(f"{where}: image is {image.size[0]}x{image.size[1]} but others are "
                                f"{native[0]}x{native[1]}; set dataset.image_size (images are then resized "
                                "or padded to it, dataset.image_fit)")
        image = fit_image(image, image_size, fit, where)
        width, height = image.size
        if width != height:
            raise UserError(f"{where}: image is {width}x{height}; non-square images need dataset.image_size "
                            "(resized to a square)")
        array = np.asarray(image, dtype=np.uint8)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(images), *array.shape), dtype=np.uint8)
        out[i] = array
    if out is None:
        return np.zeros((0, channels, image_size or 1, image_size or 1), dtype=np.uint8)
    return out


def native_size(images: Sequence[tuple[str, ImageSource]]) -> tuple[int, int] | None:
    """The size of the first image (None when there is none)."""
    if not images:
        return None
    return _open(images[0][1], images[0][0]).size


def check_model_size(side: int) -> None:
    if side < MIN_IMAGE_SIZE:
        raise UserError(f"images are {side}x{side}; the image models need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}: "
                        "set dataset.image_size (e.g. 32)")


def image_dataset(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  class_names: list[str], *, fit: str):
    """An ArrayDataset of uint8 images, normalised (per batch) with the training split's per-channel statistics."""
    if len(train_y) == 0:
        raise UserError(f"{name}: no training images")
    check_model_size(int(train_x.shape[-1]))
    mean, std = channel_stats(train_x)
    return uint8_dataset(name, train_x, train_y, test_x, test_y, class_names, mean, std, fit=fit)


def _array_images(inputs: Any, where: str, *, single: bool = False) -> list:
    """Pillow images from a uint8 array (or tensor): a batch [N, H, W], [N, H, W, C], [N, C, H, W] or one
    image [H, W], [H, W, C]. With ``single`` the array is one image, so [C, H, W] is one too (a list
    item; as a batch it would read as C grayscale images). ``where`` names it in error messages."""
    from PIL import Image

    array = np.asarray(inputs.detach().cpu() if hasattr(inputs, "detach") else inputs)
    if single and array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4) and (single or array.shape[0] not in (1, 3))):
        array = array[None]  # one image
    if array.ndim == 3:  # [N, H, W] grayscale
        array = array[:, None]
    if array.ndim != 4:
        raise UserError(f"{where}: an image array must be [H, W], [H, W, C] or [C, H, W] (or a batch of them), "
                        f"got shape {list(array.shape)}")
    if array.shape[1] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    images = []
    for item in array:
        item = item.astype(np.uint8) if item.dtype != np.uint8 else item
        hwc = item.transpose(1, 2, 0)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(hwc.shape[-1])
        if mode is None:
            raise UserError(f"{where}: an image needs 1, 3 or 4 channels, got shape {list(array.shape[1:])}")
        images.append(Image.fromarray(hwc[..., 0] if mode == "L" else hwc, mode=mode))
    return images


def preprocess_images(inputs: Any, preprocessing: dict[str, Any]):
    """Raw images (paths, bytes, Pillow images, uint8 arrays of one image, or a list mixing them; or a
    uint8 array [N, H, W(, C)] / [N, C, H, W]) as the normalised float tensor a model trained on
    ``preprocessing`` expects ([N, C, S, S])."""
    import torch

    channels, size, fit = int(preprocessing["channels"]), int(preprocessing["image_size"]), preprocessing["fit"]
    if isinstance(inputs, np.ndarray) or torch.is_tensor(inputs):
        sources = [(f"inputs[{i}]", image) for i, image in enumerate(_array_images(inputs, "inputs"))]
    else:
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        sources = []
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray) or torch.is_tensor(item):
                # one image per list item: a single array, not a batch (a list of arrays is a list of images)
                images = _array_images(item, f"inputs[{i}]", single=True)
                if len(images) != 1:
                    raise UserError(f"inputs[{i}]: a list item must be one image, got a batch of {len(images)}; "
                                    "pass the batch as one array instead of a list")
                sources.append((f"inputs[{i}]", images[0]))
            else:
                sources.append((str(item) if isinstance(item, (str, Path)) else f"inputs[{i}]", item))
    pixels = decode_images(sources, channels=channels, image_size=size, fit=fit)
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return torch.from_numpy(pixels).to(torch.float32).sub_(mean).div_(std)
