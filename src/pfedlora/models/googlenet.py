"""GoogLeNet (Szegedy et al., CVPR 2015) with torchvision's layer shapes (``torchvision.models.googlenet``
with ``aux_logits=False``), as HtFLlib's image families use it.

Every convolution is torchvision's ``BasicConv2d``: conv (no bias) -> BatchNorm (eps 0.001) -> ReLU.
Stem: 7x7/2 conv (64) -> max-pool 3x3/2 -> 1x1 conv (64) -> 3x3 conv (192) -> max-pool 3x3/2; nine
inception blocks (3a, 3b | 4a..4e | 5a, 5b) with max-pools 3x3/2 and 2x2/2 between the groups (all
pools ``ceil_mode``); global average pool -> dropout 0.2 (1,024-d). Each inception block has four
branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (torchvision's "5x5" branch is a 3x3, kept
here because the parameter counts follow it); max-pool 3x3/1 -> 1x1. The final ``fc`` is replaced by
the family split (:mod:`pfedlora.models.split`). Initialisation as torchvision: convs and linears
truncated normal (std 0.01, cut at +-2), BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from pfedlora.models.resnets import BatchNorm2d
from pfedlora.models.split import SplitModel, linear_head


def basic_conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), BatchNorm2d(cout, eps=0.001),
                         nn.ReLU())


class Inception(nn.Module):
    def __init__(self, cin: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = basic_conv(cin, ch1x1, 1)
        self.branch2 = nn.Sequential(basic_conv(cin, ch3x3red, 1), basic_conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(basic_conv(cin, ch5x5red, 1), basic_conv(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), basic_conv(cin, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection), torchvision's table
INCEPTION_BLOCKS = {
    "3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128), "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNetFeatures(nn.Module):
    """[B, C, H, W] -> [B, 1024]."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        pool = lambda kernel: nn.MaxPool2d(kernel, 2, ceil_mode=True)  # noqa: E731
        blocks = {name: Inception(*shape) for name, shape in INCEPTION_BLOCKS.items()}
        self.features = nn.Sequential(
            basic_conv(in_channels, 64, 7, 2, 3), pool(3), basic_conv(64, 64, 1), basic_conv(64, 192, 3, padding=1),
            pool(3), blocks["3a"], blocks["3b"], pool(3), blocks["4a"], blocks["4b"], blocks["4c"], blocks["4d"],
            blocks["4e"], pool(2), blocks["5a"], blocks["5b"], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(0.2))
        self.out_features = 1024
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def googlenet(in_channels: int, num_classes: int, feature_dim: int = 512, head_hidden: int | None = None) -> SplitModel:
    return SplitModel(GoogLeNetFeatures(in_channels), feature_dim, linear_head(feature_dim, num_classes, head_hidden))
