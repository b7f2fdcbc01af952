import pytest
import torch

from pfedlora.config import POOL_10, build_config
from pfedlora.models import build_model, parameter_count
from pfedlora.models.convnets import CONVNET_BUILDERS


@pytest.mark.parametrize("name", sorted(CONVNET_BUILDERS))
@pytest.mark.parametrize(("channels", "side"), [(1, 16), (3, 32)])
def test_representation_and_head_shapes(name, channels, side):
    model = build_model(name, channels, 10, side)
    x = torch.randn(3, channels, side, side)
    assert model.represent(x).shape == (3, 500)
    assert model(x).shape == (3, 10)
    assert model.head.in_features == 500


@pytest.mark.parametrize("name", sorted(CONVNET_BUILDERS))
def test_same_in_train_and_eval_mode_and_batch_independent(name):
    # GroupNorm keeps no running statistics: one image's output does not depend on its batch
    torch.manual_seed(0)
    model = build_model(name, 3, 10)
    x = torch.randn(4, 3, 32, 32)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    assert torch.allclose(train_out, eval_out, atol=1e-5)
    assert torch.allclose(model(x[:1]), eval_out[:1], atol=1e-5)


def test_pool_10_has_ten_distinct_architectures():
    sizes = {name: parameter_count(build_model(name, 3, 10)) for name in POOL_10}
    assert len(POOL_10) == len(set(POOL_10)) == 10
    assert len(set(sizes.values())) == 10
    kinds = {type(module).__name__ for name in POOL_10 for module in build_model(name, 3, 10).modules()}
    assert {"GroupNorm", "BasicBlock"} <= kinds


def test_pfedlora_runs_on_the_ten_model_pool(tmp_path):
    from pfedlora.federation.simulation import run

    config = build_config({}, ["num_clients=10", "rounds=1", "partition.kind=iid", "train.batch_size=32",
                               "dataset.max_train_samples=400", "dataset.max_test_samples=200",
                               f"model_pool=[{', '.join(POOL_10)}]"])
    summary = run(config, tmp_path / "run", log=lambda _: None)
    assert summary["adapter_reference"] == "cnn5"  # smallest of the CNN family, not resnet8
    assert 0 <= summary["final_accuracy"] <= 100 and summary["total_up_bytes"] > 0
