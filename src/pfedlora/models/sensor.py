"""HtFLlib's HAR CNNs (``HARCNN``, ``HARCNN1``, ``HARCNN3`` in ``system/flcore/trainmodel/models.py``,
after Wang's activity-recognition network), the members of the ``HtFE-sen-*`` families.

Input: sensor windows [B, channels (9 on UCI-HAR), 1, samples (128 on UCI-HAR)].

* ``harcnn``: two stages conv (1 x 9, 32 then 64 filters, stride s) -> ReLU -> max-pool (1 x 2, stride 2);
* ``harcnn1``: one such stage (32 filters);
* ``harcnn3``: three stages with (1 x 5) kernels (32, 64, 128 filters);

then Linear(flattened, 1,024) -> ReLU -> Linear(1,024, 512) -> ReLU; the last Linear (512 -> classes) is
replaced by the family split. HtFLlib passes the flattened width as a constant (``dim_hidden``: 1,664,
832, 3,328); only 1,664 (``harcnn`` at stride 1 on 128 samples: 64 x 26) is the width its layers
produce on UCI-HAR windows, so here it is computed from the input shape instead.
"""

from __future__ import annotations

import torch
from torch import nn

from pfedlora.errors import UserError
from pfedlora.models.split import SplitModel, linear_head

# name -> (filters per stage, kernel width)
HAR_LAYOUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "harcnn": ((32, 64), 9),
    "harcnn1": ((32,), 9),
    "harcnn3": ((32, 64, 128), 5),
}


def flattened_width(name: str, stride: int, samples: int) -> int:
    """Channels x samples left after the conv stages (height 1)."""
    filters, kernel = HAR_LAYOUTS[name]
    width = samples
    for _ in filters:
        width = (width - kernel) // stride + 1  # conv, no padding
        width = (width - 2) // 2 + 1  # max-pool (1 x 2), stride 2
    if width < 1:
        raise ValueError(f"{name} at stride {stride} needs windows longer than {samples} samples (the HtFE-sen-* "
                         "families read sensor windows [channels, 1, samples], UCI-HAR's are [9, 1, 128])")
    return filters[-1] * width


class HARFeatures(nn.Module):
    """[B, C, 1, samples] -> [B, 512]."""

    def __init__(self, name: str, in_channels: int, samples: int, stride: int = 1) -> None:
        super().__init__()
        filters, kernel = HAR_LAYOUTS[name]
        stages: list[nn.Module] = []
        cin = in_channels
        for cout in filters:
            stages += [nn.Conv2d(cin, cout, (1, kernel), stride), nn.ReLU(), nn.MaxPool2d((1, 2), 2)]
            cin = cout
        self.conv = nn.Sequential(*stages)
        self.fc = nn.Sequential(nn.Linear(flattened_width(name, stride, samples), 1024), nn.ReLU(),
                                nn.Linear(1024, 512), nn.ReLU())
        self.samples = samples
        self.out_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] != 1 or x.shape[3] != self.samples:
            raise UserError(f"HAR CNNs (HtFE-sen-*) read sensor windows [B, channels, 1, {self.samples}], got "
                            f"{list(x.shape)}; use data of that shape (e.g. UCI-HAR as client_npz)")
        return self.fc(torch.flatten(self.conv(x), 1))


def harcnn(name: str, stride: int, in_channels: int, samples: int, num_classes: int, feature_dim: int = 512,
           head_hidden: int | None = None) -> SplitModel:
    return SplitModel(HARFeatures(name, in_channels, samples, stride), feature_dim,
                      linear_head(feature_dim, num_classes, head_hidden))
