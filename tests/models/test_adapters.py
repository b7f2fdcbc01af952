import pytest
import torch
from torch import nn

from pfedlora.models import PersonalizedModel, build_adapter, build_model, parameter_count
from pfedlora.models.adapters import HeadLoRA, LowRankConv2d, LowRankLinear


def _adapter(construction, rank, placement="branch", channels=3, classes=10):
    return build_adapter(reference="cnn5", construction=construction, placement=placement, rank=rank,
                         in_channels=channels, num_classes=classes)


@pytest.mark.parametrize("rank", [2, 8, 16])
def test_reduced_cuts_hidden_widths_to_rank(rank):
    adapter = _adapter("reduced", rank)
    assert adapter.conv1.out_channels == rank and adapter.conv2.out_channels == rank
    assert adapter.fc1.out_features == rank and adapter.fc2.out_features == rank
    expected = (3 * rank * 25 + rank) + (rank * rank * 25 + rank) + (rank * 25 * rank + rank) + (rank * rank + rank) + (rank * 10 + 10)
    assert parameter_count(adapter) == expected
    assert adapter(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("rank", [2, 8])
def test_factorized_replaces_every_layer_with_rank_r_product(rank):
    adapter = _adapter("factorized", rank)
    layers = [m for m in adapter.modules() if isinstance(m, (LowRankConv2d, LowRankLinear))]
    assert len(layers) == 5
    for layer in layers:
        inner = layer[0].out_channels if isinstance(layer, LowRankConv2d) else layer[0].out_features
        assert inner == rank
    # cnn5 widths: 3->16->32 convs (5x5), 800->500->500->10 linears
    expected = (3 * 25 * rank + rank * 16 + 16) + (16 * 25 * rank + rank * 32 + 32)
    expected += sum(i * rank + rank * o + o for i, o in [(800, 500), (500, 500), (500, 10)])
    assert parameter_count(adapter) == expected
    assert adapter(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_head_placement_is_a_lora_delta_on_the_header():
    adapter = _adapter("reduced", 4, placement="head")
    assert isinstance(adapter, HeadLoRA)
    assert adapter.lora_A.shape == (4, 500) and adapter.lora_B.shape == (10, 4)
    assert parameter_count(adapter) == 4 * 500 + 10 * 4


def test_same_shapes_on_every_client_whatever_the_local_model():
    a, b = _adapter("factorized", 8), _adapter("factorized", 8)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_branch_prediction_mixes_with_mu():
    local, adapter = build_model("cnn3", 3, 10), _adapter("reduced", 8)
    x = torch.randn(3, 3, 32, 32)
    model = PersonalizedModel(local, adapter, mu=0.3, placement="branch")
    torch.testing.assert_close(model(x), 0.7 * local(x) + 0.3 * adapter(x))


def test_head_prediction_starts_at_the_local_model_and_adds_mu_delta():
    local, adapter = build_model("cnn2", 3, 10), _adapter("reduced", 4, placement="head")
    x = torch.randn(3, 3, 32, 32)
    model = PersonalizedModel(local, adapter, mu=0.5, placement="head")
    torch.testing.assert_close(model(x), local(x))  # B = 0 at init
    nn.init.normal_(adapter.lora_B)
    rep = local.represent(x)
    torch.testing.assert_close(model(x), local.head(rep) + 0.5 * rep @ adapter.lora_A.t() @ adapter.lora_B.t())
