import pytest
import torch
from torch import nn

from pfedlora.algorithms import pfedlora
from pfedlora.algorithms.base import FederationContext
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.models import PersonalizedModel, build_adapter, build_model, parameter_count
from pfedlora.models.adapters import (
    HeadLoRA,
    LowRankConv2d,
    LowRankLinear,
    PooledInput,
    factor_pairs,
    lora_factor_pairs,
    zero_output_layer,
)


def _adapter(construction, rank, placement="branch", channels=3, classes=10, **options):
    return build_adapter(reference="cnn5", construction=construction, placement=placement, rank=rank,
                         in_channels=channels, num_classes=classes, **options)


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


@pytest.mark.parametrize("construction", ["reduced", "factorized"])
def test_same_shapes_on_every_client_whatever_the_local_model(construction):
    # each client builds its adapter in its own context (as a Flower SuperNode does), from the
    # federation's config, whatever its own local architecture
    config = build_config({"num_clients": 5, "adapter": {"construction": construction, "rank": 8}})
    local_shapes, adapter_shapes = [], []
    for client_id in range(5):
        ctx = FederationContext(config, (3, 32, 32), 10, torch.device("cpu"))
        model = pfedlora.personalized_model(ctx, client_id, pfedlora.init_client(ctx, client_id),
                                            pfedlora.init_server(ctx)[1])
        local_shapes.append({k: tuple(v.shape) for k, v in model.local_model.state_dict().items()})
        adapter_shapes.append({k: tuple(v.shape) for k, v in model.adapter.state_dict().items()})
    assert len({repr(shapes) for shapes in local_shapes}) == 5  # cnn1..cnn5: five different local models
    assert all(shapes == adapter_shapes[0] for shapes in adapter_shapes)


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


def test_additive_combine_adds_mu_adapter_to_the_full_local_output():
    local, adapter = build_model("cnn3", 3, 10), _adapter("reduced", 8)
    x = torch.randn(3, 3, 32, 32)
    additive = PersonalizedModel(local, adapter, mu=0.3, placement="branch", combine="additive")
    convex = PersonalizedModel(local, adapter, mu=0.3, placement="branch", combine="convex")
    torch.testing.assert_close(additive(x), local(x) + 0.3 * adapter(x))
    assert not torch.allclose(additive(x), convex(x))
    with pytest.raises(ValueError, match="combine"):
        PersonalizedModel(local, adapter, mu=0.3, placement="branch", combine="mean")


@pytest.mark.parametrize("construction", ["reduced", "factorized"])
def test_zero_init_zeroes_the_output_layer_and_it_still_gets_gradient(construction):
    torch.manual_seed(0)  # a rank-4 ReLU layer can be dead on a few random inputs
    adapter = _adapter(construction, 4, zero_init=True)
    last = adapter.head if construction == "reduced" else adapter.head[1]  # the last factor
    assert torch.equal(last.weight, torch.zeros_like(last.weight)) and torch.equal(last.bias, torch.zeros_like(last.bias))
    x = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adapter(x), torch.zeros(20, 10))
    torch.nn.functional.cross_entropy(adapter(x), torch.arange(20) % 10).backward()
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    untouched = _adapter(construction, 4)
    assert not torch.equal(untouched(x), torch.zeros(20, 10))


def test_zero_output_layer_needs_a_linear():
    with pytest.raises(ValueError, match="no Linear"):
        zero_output_layer(torch.nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("construction", ["reduced", "factorized"])
def test_input_pool_runs_the_adapter_on_the_pooled_image(construction):
    pooled = _adapter(construction, 8, input_pool=2)
    assert isinstance(pooled, PooledInput) and pooled.factor == 2
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(pooled(x), pooled.body(torch.nn.functional.avg_pool2d(x, 2)))
    assert parameter_count(pooled) < parameter_count(_adapter(construction, 8))
    # 32 / 4 = 8: too small for two (5x5 conv, 2x pool) stages
    with pytest.raises(UserError, match="input_pool 4"):
        _adapter(construction, 8, input_pool=4)
    with pytest.raises(UserError, match="input_pool"):
        _adapter(construction, 8, placement="head", input_pool=2)


def test_factor_pairs_name_every_b_a_product():
    factorized = _adapter("factorized", 4)
    state = factorized.state_dict()
    pairs = factor_pairs(factorized)
    assert len(pairs) == 5
    for b, a in pairs:
        assert state[a].shape[0] == 4 and state[b].shape[1] == 4  # rank x ..., out x rank (x 1 x 1)
    assert ("conv1.1.weight", "conv1.0.weight") in pairs and ("head.1.weight", "head.0.weight") in pairs
    assert factor_pairs(_adapter("reduced", 4, placement="head")) == [("lora_B", "lora_A")]
    assert factor_pairs(_adapter("reduced", 4)) == []
    assert [b for b, _ in factor_pairs(_adapter("factorized", 4, input_pool=2))][0] == "body.conv1.1.weight"
    names = ["x.query.lora_A.default.weight", "x.query.lora_B.default.weight", "x.query.base_layer.weight"]
    assert lora_factor_pairs(names) == [("x.query.lora_B.default.weight", "x.query.lora_A.default.weight")]
