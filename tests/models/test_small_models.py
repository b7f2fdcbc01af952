"""HtFLlib's 4-layer CNN (FedAvgCNN) and Amazon-review MLPs as family members."""

import pytest
import torch
from family_checks import check_member, conv, image_batch, linear


def test_cnn():
    # conv 5x5 (3 -> 32), conv 5x5 (32 -> 64), Linear(1,600 -> 512) at 32x32 (HtFLlib: dim=1600), head
    expected = conv(3, 32, 5, bias=True) + conv(32, 64, 5, bias=True) + linear(1600, 512) + linear(512, 10)
    check_member("htfl_cnn", image_batch(), 10, expected)


@pytest.mark.parametrize(("name", "hidden"), [("htfl_mlp", []), ("htfl_mlp500", [500]),
                                              ("htfl_mlp1000x500", [1000, 500]),
                                              ("htfl_mlp1000x500x200", [1000, 500, 200])])
def test_mlp(name, hidden):
    # AmazonMLP: 5,000 features -> hidden ... -> 100 -> ReLU; fc (100 -> 2) replaced by the head Linear(512, 2)
    widths = [5000, *hidden, 100]
    expected = sum(linear(a, b) for a, b in zip(widths, widths[1:])) + linear(512, 2)
    x = torch.randn(2, 5000, 1, 1)  # the features as a 5,000-channel 1x1 "image": the MLP flattens its input
    check_member(name, x, 2, expected, placement="head")
