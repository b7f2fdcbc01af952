"""The split every HtFLlib family member gets: a feature extractor of its own native width, pooled to
the family's shared width (``feature_dim``), then a classification head.

HtFLlib (Zhang et al., KDD 2025, ``system/flcore/trainmodel/models.py``, ``BaseHeadSplit``) takes a
reference model, replaces its last layer (``fc``, ``classifier`` or ViT's ``heads``) by a
parameter-free 1-d adaptive average pool to ``feature_dim`` and puts a fresh head on top:
``Linear(feature_dim, classes)`` (ViT: ``Linear(feature_dim, 768) -> Tanh -> Linear(768, classes)``).
So a ResNet-50's 2,048-d pooled features become 512-d by averaging groups of four, and a
ResNet-4's 64-d features become 512-d by repeating each value eight times.

:class:`SplitModel` is that split, with the interface every algorithm here relies on:
``represent(x)`` (B x ``representation_dim``) and ``head``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def pool_width(z: torch.Tensor, width: int) -> torch.Tensor:
    """[B, D] -> [B, width] by 1-d adaptive average pooling (identity when D == width)."""
    if z.shape[1] == width:
        return z
    return F.adaptive_avg_pool1d(z.unsqueeze(1), width).squeeze(1)


def linear_head(feature_dim: int, num_classes: int, hidden: int | None = None) -> nn.Module:
    """HtFLlib's heads: ``Linear(feature_dim, classes)``, or with ``hidden`` (the ``HtC-img-4`` heads,
    ``Head(hidden_dims=[512, hidden])``) ``Linear(feature_dim, hidden) -> ReLU -> Linear(hidden, classes)``.

    HtFLlib's ``Head`` also puts a ReLU after the last Linear, on the logits; that clamps every
    negative logit to zero, so it is left out here (the parameter count is the same)."""
    if hidden is None:
        return nn.Linear(feature_dim, num_classes)
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class SplitModel(nn.Module):
    """``base(x)`` (B x native width) -> pooled to ``feature_dim`` = ``represent(x)`` -> ``head``."""

    def __init__(self, base: nn.Module, feature_dim: int, head: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.head = head
        self.representation_dim = feature_dim

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        # pooled to representation_dim (FedMRL may narrow a base's last Linear and this width with it)
        return pool_width(self.base(x), self.representation_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.represent(x))
