"""ResNets of the HtFLlib families: ResNet-18/34/50/101/152 with torchvision's layer shapes (He et al.,
CVPR 2016; ``torchvision.models.resnetXX``), and HtFLlib's shallow ResNet-4/6/8/10
(``system/flcore/trainmodel/resnet.py``: the same stem and blocks, 1..4 stages of one basic block,
stage widths 64/128/256/512).

Layout (torchvision's): conv 7x7/2 (64, no bias) -> BatchNorm -> ReLU -> max-pool 3x3/2 -> stages
of basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) blocks, the first block of
each later stage striding by 2 with a 1x1 projection on the skip path -> global average pool. The
final ``fc`` is replaced by the family split (:mod:`pfedlora.models.split`). Initialisation as
torchvision: convs Kaiming-normal (fan out), BatchNorm weight 1 and bias 0.

The normalisation is BatchNorm, as in the reference. At 32x32 the last stage is 1x1, so a training
batch of one image leaves BatchNorm a single value per channel, which torch refuses;
:class:`BatchNorm2d` normalises such a batch with the running statistics instead (and leaves them
unchanged). Every other batch is normalised exactly as ``nn.BatchNorm2d`` does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pfedlora.models.split import SplitModel, linear_head


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also accepts a training batch with one value per channel (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = _projection(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)  # torchvision (v1.5): the stride on the 3x3
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = BatchNorm2d(planes * 4)
        self.downsample = _projection(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), BatchNorm2d(cout))


class ResNetFeatures(nn.Module):
    """Stem and stages -> global average pool: [B, C, H, W] -> [B, width * expansion of the last stage]."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: list[int], in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        cin = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for i in range(count):
                stage.append(block(cin, planes, 2 if index > 0 and i == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1)


# name -> (block, blocks per stage); 4/6/8/10 are HtFLlib's: 2 + 2 x (number of basic blocks) layers
RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet4": (BasicBlock, [1]),
    "resnet6": (BasicBlock, [1, 1]),
    "resnet8": (BasicBlock, [1, 1, 1]),
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def resnet(name: str, in_channels: int, num_classes: int, feature_dim: int = 512,
           head_hidden: int | None = None) -> SplitModel:
    """The family member ``name`` (a key of :data:`RESNET_LAYOUTS`), split at ``feature_dim``."""
    block, blocks = RESNET_LAYOUTS[name]
    return SplitModel(ResNetFeatures(block, blocks, in_channels), feature_dim,
                      linear_head(feature_dim, num_classes, head_hidden))
