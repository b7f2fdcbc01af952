"""MobileNetV2 (Sandler et al., CVPR 2018) with the layer shapes of HtFLlib's
``system/flcore/trainmodel/mobilenet_v2.py`` (torchvision's, width multiplier 1, its ``classifier``
renamed ``fc``).

Stem conv 3x3/2 (32) -> 17 inverted-residual blocks (expansion t, output channels c, repeats n,
first stride s: (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1))
-> 1x1 conv (1,280) -> global average pool -> dropout 0.2. A block is 1x1 expansion (when t > 1)
-> 3x3 depthwise (stride s) -> 1x1 linear projection, with a skip connection when the shape is kept;
every conv has no bias and is followed by BatchNorm (and ReLU6, except the projection). The final
``fc`` is replaced by the family split (:mod:`pfedlora.models.split`). Initialisation: convs
Kaiming-normal (fan out), BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from pfedlora.models.resnets import BatchNorm2d
from pfedlora.models.split import SplitModel, linear_head

# (expansion t, output channels c, repeats n, first stride s)
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
LAST_CHANNELS = 1280


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [conv_bn_relu6(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    """[B, C, H, W] -> [B, 1280]."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, 32, 3, 2)]
        cin = 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, LAST_CHANNELS, 1))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.out_features = LAST_CHANNELS
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def mobilenet_v2(in_channels: int, num_classes: int, feature_dim: int = 512,
                 head_hidden: int | None = None) -> SplitModel:
    return SplitModel(MobileNetV2Features(in_channels), feature_dim, linear_head(feature_dim, num_classes, head_hidden))
