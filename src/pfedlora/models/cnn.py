"""CNN-1 .. CNN-5, the heterogeneous local models of the pFedLoRA / FedGH experiments.

Every model is conv 5x5 -> ReLU -> maxpool 2 -> conv 5x5 -> ReLU -> maxpool 2 -> fc1 -> ReLU
-> fc2 (-> 500) -> ReLU -> fc3 (500 -> classes). They differ only in the second conv's filters
and fc1's width, so they share the 500-d representation and the shape of the classification
header, which some baselines (LG-FedAvg, FedGH) exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pfedlora.models.pooling import MaxPool2x2

REPRESENTATION_DIM = 500


@dataclass(frozen=True)
class CNNSpec:
    conv1: int
    conv2: int
    fc1: int
    fc2: int = REPRESENTATION_DIM


CNN_SPECS: dict[str, CNNSpec] = {
    "cnn1": CNNSpec(conv1=16, conv2=32, fc1=2000),
    "cnn2": CNNSpec(conv1=16, conv2=16, fc1=2000),
    "cnn3": CNNSpec(conv1=16, conv2=32, fc1=1000),
    "cnn4": CNNSpec(conv1=16, conv2=32, fc1=800),
    "cnn5": CNNSpec(conv1=16, conv2=32, fc1=500),
    # a wider member of the family, for 10-architecture pools (see models/convnets.py)
    "cnn_wide": CNNSpec(conv1=32, conv2=64, fc1=2000),
}


def _flat_side(image_size: int) -> int:
    # two (conv 5x5 valid -> maxpool 2) stages
    side = image_size
    for _ in range(2):
        side = (side - 4) // 2
    if side < 1:
        raise ValueError(f"image size {image_size} is too small for the CNN models (need >= 16)")
    return side


class CNN(nn.Module):
    """A two-conv, three-fc CNN that exposes ``represent`` (500-d) and ``head`` separately."""

    def __init__(self, spec: CNNSpec, in_channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        side = _flat_side(image_size)
        self.conv1 = nn.Conv2d(in_channels, spec.conv1, 5)
        self.conv2 = nn.Conv2d(spec.conv1, spec.conv2, 5)
        self.pool = MaxPool2x2()  # torch's MaxPool2d(2), bit for bit, ~10x faster forward on CPU
        self.fc1 = nn.Linear(spec.conv2 * side * side, spec.fc1)
        self.fc2 = nn.Linear(spec.fc1, spec.fc2)
        self.head = nn.Linear(spec.fc2, num_classes)
        self.representation_dim = spec.fc2

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        # relu(pool(z)) == pool(relu(z)) bit for bit, gradients included (ReLU is monotone, and a
        # window whose maximum is <= 0 gets zero gradient either way); ReLU then runs on a 4x smaller tensor
        x = torch.relu(self.pool(self.conv1(x)))
        x = torch.relu(self.pool(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return torch.relu(self.fc2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.represent(x))
