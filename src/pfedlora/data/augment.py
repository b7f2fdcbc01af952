"""Training-time image augmentation on batched tensors: random crop with zero padding, horizontal flip.

The authors' CIFAR setting (pad 4, random 32x32 crop, flip with probability 1/2), done for a whole
mini-batch with one gather, no per-sample Python. Randomness comes from the client's
``torch.Generator``, so a run is deterministic and independent of the order clients run in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) zero-padded by ``padding``, randomly cropped back to H x W and
    flipped left-right with probability 1/2 (independently per image)."""
    if x.dim() != 4:
        raise ValueError(f"augmentation expects image batches (N, C, H, W), got shape {tuple(x.shape)}")
    n, channels, height, width = x.shape
    # offsets and flips drawn on the CPU generator, so the same seed gives the same crops on any device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[0][:, None] + torch.arange(height)  # (N, H)
    steps = torch.arange(width)
    cols = offsets[1][:, None] + torch.where(flips[:, None], width - 1 - steps, steps)  # (N, W)
    device = x.device
    rows, cols = rows.to(device), cols.to(device)
    # one gather: rows then columns (the flip is a reversed column index)
    out = padded.gather(2, rows[:, None, :, None].expand(n, channels, height, width + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, channels, height, width))
