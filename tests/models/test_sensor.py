"""HtFLlib's HAR CNNs (HtFE-sen-* families) on UCI-HAR-shaped windows [B, 9, 1, 128]."""

import pytest
import torch
from family_checks import check_member, conv, linear

from pfedlora.errors import UserError

WINDOW = torch.randn(2, 9, 1, 128)


def fc_stack(flattened: int) -> int:
    return linear(flattened, 1024) + linear(1024, 512) + linear(512, 6)  # last: the head (512 -> 6 activities)


def test_harcnn_stride_1_matches_htfllib_dim_hidden():
    # two stages conv (1 x 9) -> max-pool (1 x 2)/2: 128 -> 120 -> 60 -> 52 -> 26 samples x 64 = 1,664 (dim_hidden)
    expected = conv(9, 32, (1, 9), bias=True) + conv(32, 64, (1, 9), bias=True) + fc_stack(1664)
    check_member("htfl_harcnn_s1", WINDOW, 6, expected, placement="head")


@pytest.mark.parametrize(("name", "flattened", "convs"), [
    ("htfl_harcnn_s2", 64 * 5, [(9, 32, 9), (32, 64, 9)]),  # 128 -> 60 -> 30 -> 11 -> 5
    ("htfl_harcnn1_s1", 32 * 60, [(9, 32, 9)]),  # 128 -> 120 -> 60
    ("htfl_harcnn3_s1", 128 * 12, [(9, 32, 5), (32, 64, 5), (64, 128, 5)]),  # 124, 62, 58, 29, 25, 12
])
def test_other_members(name, flattened, convs):
    expected = sum(conv(a, b, (1, k), bias=True) for a, b, k in convs) + fc_stack(flattened)
    check_member(name, WINDOW, 6, expected, placement="head")


def test_wrong_input_shape_is_named():
    from pfedlora.models.registry import build_model

    model = build_model("htfl_harcnn_s1", 9, 6, 128)
    with pytest.raises(UserError, match=r"sensor windows \[B, channels, 1, 128\]"):
        model(torch.randn(2, 9, 128, 128))
