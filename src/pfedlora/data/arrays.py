"""The in-memory dataset every loader returns, and the uint8 -> model-input normalisation.

Kept apart from the loaders (:mod:`pfedlora.data.datasets`, :mod:`~pfedlora.data.text`, the
bring-your-own-data sources) so that they import it, and the dispatcher imports them, without
import cycles.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class ArrayDataset:
    """An in-memory classification dataset.

    CIFAR-style images stay raw uint8 (a quarter of float32's memory) with their per-channel
    training statistics in ``mean`` / ``std``; :meth:`normalize` turns the rows a client actually
    uses into float32 model input, bit for bit what normalising the whole split first gave. With
    ``mean`` None (digits, text, already-normalised arrays) ``train_x`` / ``test_x`` are model input.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: list[str]
    # text datasets: token ids [N, max_length] plus what text models need (see pfedlora.data.text)
    text: Any = None
    mean: list[float] | None = None
    std: list[float] | None = None
    # partition.kind given: the data's own clients (pfedlora.data.client_data.GivenClients)
    clients: Any = None
    # how a raw input becomes model input, for exported models (pfedlora.export)
    preprocessing: dict[str, Any] | None = None
    # caps applied while loading: config key -> (samples kept, samples the data had), e.g.
    # {"dataset.max_train_samples": (1200, 10003)}, so a run can say what it left out
    caps: dict[str, tuple[int, int]] = field(default_factory=dict)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``train_x`` / ``test_x`` as float32 model input."""
        if self.mean is None or self.std is None:
            return x
        return apply_norm(x, torch.tensor(self.mean, device=x.device), torch.tensor(self.std, device=x.device))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(channels, height, width) of one image; (max_length,) for text."""
        if self.text is not None:
            return (int(self.train_x.shape[1]),)
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


def apply_norm(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return x.to(torch.float32).sub_(mean.view(shape).float()).div_(std.view(shape).float())


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    # Exact per-channel mean/std from a histogram of uint8 values: no float copy of the whole split.
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(np.ascontiguousarray(x[:, c]).ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(np.sqrt(var)) if var > 0 else 1.0)
    return means, stds


def read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array`` without a copy; it may be a read-only memory map of the cache, which
    is only ever indexed (copied out) and normalised out of place, never written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def uint8_dataset(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  class_names: list[str], mean: list[float], std: list[float], fit: str = "resize") -> ArrayDataset:
    """uint8 images [N, C, S, S] with their per-channel training statistics (0..255 units)."""
    return ArrayDataset(
        name=name,
        train_x=read_only_tensor(train_x),
        train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        test_x=read_only_tensor(test_x),
        test_y=torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
        num_classes=len(class_names),
        class_names=list(class_names),
        mean=list(mean),
        std=list(std),
        # raw input: uint8 pixels, channel-first, brought to the dataset's size by ``fit``
        preprocessing={"kind": "image", "channels": int(train_x.shape[1]), "image_size": int(train_x.shape[-1]),
                       "fit": fit, "mean": list(mean), "std": list(std),
                       "input": {"dtype": "uint8", "range": [0, 255], "pixel_scale": 1.0, "resize": "pillow-bilinear"}},
    )
