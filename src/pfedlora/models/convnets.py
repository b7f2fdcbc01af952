"""Five more image models for larger heterogeneous pools (open question 4: a 10-architecture pool).

They differ from CNN-1..5 and from each other in more than widths: depth, kernel size, residual
connections, depthwise-separable convolutions. Like the CNNs, each exposes ``represent(x)``
(a 500-d ReLU representation) and ``head`` (500 -> classes), so every baseline that exchanges
headers or representations (LG-FedAvg, FedProto, FedGH, FD) runs on a mixed pool.

* ``cnn_wide``: CNN-1's layout with twice the conv filters (32, 64) — see models/cnn.py.
* ``cnn_deep``: three 5x5 conv stages (32, 64, 128, same padding, max-pool after each), two fc layers.
* ``vgg_s``: VGG-style stacks of 3x3 convs (32, 32 | 64, 64 | 128), max-pool between stacks.
* ``resnet8``: a ResNet with three stages of one basic block each (16, 32, 64 channels).
* ``mobilenet_s``: a stem conv and five depthwise-separable blocks (MobileNet v1 style).

Normalisation is GroupNorm, not BatchNorm: it keeps no running statistics, so a model behaves the
same in training and evaluation, on any batch size, and on clients whose batches hold one or two
classes (BatchNorm statistics are unreliable under that skew; Hsieh et al., ICML 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from pfedlora.models.cnn import REPRESENTATION_DIM
from pfedlora.models.pooling import MaxPool2x2


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4) or 1, channels)


class _Backbone(nn.Module):
    """features (conv stack) -> global average pool -> fc (-> 500) -> ReLU; head 500 -> classes."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = []
        width = feature_dim
        if hidden is not None:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers += [nn.Linear(width, REPRESENTATION_DIM), nn.ReLU()]
        self.fc = nn.Sequential(*layers)
        self.head = nn.Linear(REPRESENTATION_DIM, num_classes)
        self.representation_dim = REPRESENTATION_DIM

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.represent(x))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), _norm(cout), nn.ReLU()]


def cnn_deep(in_channels: int, num_classes: int, image_size: int = 32) -> nn.Module:
    layers: list[nn.Module] = []
    for cin, cout in ((in_channels, 32), (32, 64), (64, 128)):
        layers += [*_conv(cin, cout, 5), MaxPool2x2(ceil_mode=True)]
    return _Backbone(nn.Sequential(*layers), 128, num_classes, hidden=1000)


def vgg_s(in_channels: int, num_classes: int, image_size: int = 32) -> nn.Module:
    layers = [*_conv(in_channels, 32, 3), *_conv(32, 32, 3), MaxPool2x2(ceil_mode=True),
              *_conv(32, 64, 3), *_conv(64, 64, 3), MaxPool2x2(ceil_mode=True),
              *_conv(64, 128, 3), MaxPool2x2(ceil_mode=True)]
    return _Backbone(nn.Sequential(*layers), 128, num_classes)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a skip connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv(cin, cout, 3, stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _norm(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet8(in_channels: int, num_classes: int, image_size: int = 32) -> nn.Module:
    features = nn.Sequential(*_conv(in_channels, 16, 3), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                             BasicBlock(32, 64, 2))
    return _Backbone(features, 64, num_classes)


def mobilenet_s(in_channels: int, num_classes: int, image_size: int = 32) -> nn.Module:
    layers = _conv(in_channels, 32, 3)
    for cin, cout, stride in ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 2)):
        layers += [*_conv(cin, cin, 3, stride, groups=cin), *_conv(cin, cout, 1)]  # depthwise, pointwise
    return _Backbone(nn.Sequential(*layers), 256, num_classes)


CONVNET_BUILDERS = {"cnn_deep": cnn_deep, "vgg_s": vgg_s, "resnet8": resnet8, "mobilenet_s": mobilenet_s}
