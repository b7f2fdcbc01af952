import pytest
import torch

from pfedlora.models import build_model, model_names, parameter_count
from pfedlora.models.cnn import CNN_SPECS


@pytest.mark.parametrize("name", sorted(CNN_SPECS))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_and_representation_shapes(name, channels):
    model = build_model(name, channels, 10)
    x = torch.randn(4, channels, 32, 32)
    assert model.represent(x).shape == (4, 500)
    assert model(x).shape == (4, 10)
    assert model.head.in_features == 500 and model.head.out_features == 10


def test_cnn1_parameter_count_is_analytic():
    # conv1 3->16 5x5, conv2 16->32 5x5, fc1 800->2000, fc2 2000->500, fc3 500->10, all with bias
    expected = (3 * 16 * 25 + 16) + (16 * 32 * 25 + 32) + (800 * 2000 + 2000) + (2000 * 500 + 500) + (500 * 10 + 10)
    assert parameter_count(build_model("cnn1", 3, 10)) == expected


def test_widths_follow_the_authors_table():
    widths = {name: (build_model(name, 3, 10).conv2.out_channels, build_model(name, 3, 10).fc1.out_features)
              for name in model_names() if name in CNN_SPECS}
    assert widths == {"cnn1": (32, 2000), "cnn2": (16, 2000), "cnn3": (32, 1000), "cnn4": (32, 800), "cnn5": (32, 500),
                      "cnn_wide": (64, 2000)}


def test_unknown_model_names_valid_choices():
    with pytest.raises(KeyError, match="cnn1"):
        build_model("resnet999", 3, 10)
