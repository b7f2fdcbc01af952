"""The small members of HtFLlib's families (``system/flcore/trainmodel/models.py``):

* the 4-layer CNN (``FedAvgCNN``, McMahan et al.'s FedAvg CNN): conv 5x5 (32) -> ReLU -> max-pool 2
  -> conv 5x5 (64) -> ReLU -> max-pool 2 -> Linear(64 x 5 x 5 = 1,600 at 32x32, 512) -> ReLU; its
  ``fc`` (512 -> classes) is replaced by the family split. No normalisation.
* the Amazon-review MLPs (``AmazonMLP``, the ``MLPs`` family): Linear(5,000 features, h1) -> ReLU ...
  -> Linear(h_last, 100) -> ReLU; ``fc`` (100 -> 2) replaced by the split. Here the input width is
  whatever the data's flattened samples have (5,000 on the Amazon review features).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pfedlora.models.split import SplitModel, linear_head


class FedAvgCNNFeatures(nn.Module):
    """[B, C, S, S] -> [B, 512]."""

    def __init__(self, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image size {image_size} is too small for the 4-layer CNN (need >= 16)")
        self.conv1 = nn.Conv2d(in_channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * side * side, 512)
        self.pool = nn.MaxPool2d(2)
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return torch.relu(self.fc1(torch.flatten(x, 1)))


def fedavg_cnn(in_channels: int, num_classes: int, image_size: int = 32, feature_dim: int = 512,
               head_hidden: int | None = None) -> SplitModel:
    return SplitModel(FedAvgCNNFeatures(in_channels, image_size), feature_dim,
                      linear_head(feature_dim, num_classes, head_hidden))


class MLPFeatures(nn.Module):
    """[B, ...] flattened -> Linear/ReLU layers of widths ``hidden`` -> Linear(., 100) -> ReLU: [B, 100]."""

    def __init__(self, in_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in (*hidden, 100):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*layers)
        self.out_features = 100

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.flatten(x, 1))


def amazon_mlp(hidden: tuple[int, ...], input_shape: tuple[int, ...], num_classes: int, feature_dim: int = 512,
               head_hidden: int | None = None) -> SplitModel:
    return SplitModel(MLPFeatures(math.prod(input_shape), hidden), feature_dim,
                      linear_head(feature_dim, num_classes, head_hidden))
