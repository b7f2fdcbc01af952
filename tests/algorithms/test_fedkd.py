"""FedKD: the SVD step (energy kept, payload shrunk), aggregation of updates, the mutual loss."""

import pytest
import torch

from pfedlora.algorithms import fedkd
from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.distillation import ModelPair


def _nbytes(payload):
    return sum(t.numel() * t.element_size() for t in payload.values())


def _low_rank_plus_noise(m, n, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) + 0.01 * torch.randn(m, n, generator=g)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.98])
def test_svd_keeps_at_least_the_requested_energy_with_the_fewest_factors(energy):
    update = {"w": _low_rank_plus_noise(64, 200, 8), "b": torch.randn(64)}
    payload = fedkd.svd_compress(update, energy)
    s_all = torch.linalg.svdvals(update["w"]).double() ** 2
    k = payload["w.S"].numel()
    assert float((payload["w.S"].double() ** 2).sum()) >= energy * float(s_all.sum()) * (1 - 1e-9)
    assert k == 1 or float(s_all[: k - 1].sum()) < energy * float(s_all.sum())
    restored = fedkd.svd_decompress(payload, update)
    residual = float(((restored["w"] - update["w"]) ** 2).sum())
    assert residual <= (1 - energy) * float(s_all.sum()) + 1e-3
    assert torch.equal(restored["b"], update["b"])  # vectors travel dense


def test_svd_really_shrinks_the_uploaded_payload_and_conv_weights_are_factorised():
    conv = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)).repeat(1, 50).reshape(32, 16, 5, 5)
    update = {"fc.weight": _low_rank_plus_noise(500, 800, 4), "conv.weight": conv}
    payload = fedkd.svd_compress(update, 0.95)
    assert {"fc.weight.U", "fc.weight.S", "fc.weight.V", "conv.weight.U"} <= set(payload)
    assert _nbytes(payload) < 0.1 * _nbytes(update)
    assert fedkd.svd_decompress(payload, update)["conv.weight"].shape == conv.shape


def test_a_full_rank_tensor_whose_factors_would_be_larger_travels_dense():
    update = {"w": torch.eye(6)}
    payload = fedkd.svd_compress(update, 0.99)
    assert set(payload) == {"w.dense"}


def test_energy_threshold_is_annealed_from_start_to_end(make_context):
    ctx = make_context(rounds=5, fedkd={"energy_start": 0.9, "energy_end": 0.98})
    assert [round(fedkd.energy_threshold(ctx, r), 4) for r in (1, 3, 5)] == [0.9, 0.94, 0.98]


def test_client_uploads_compressed_update_and_server_applies_the_mean_update(make_context, make_data):
    ctx = make_context(model_pool=["cnn1", "cnn5"])
    server_state, broadcast = fedkd.init_server(ctx)
    assert float(broadcast[fedkd.ENERGY]) == pytest.approx(0.95)
    result = fedkd.client_update(ctx, 0, fedkd.init_client(ctx, 0), broadcast, make_data(),
                                 torch.Generator().manual_seed(0))
    weights = {k: v for k, v in broadcast.items() if k != fedkd.ENERGY}
    assert _nbytes(result.upload) < _nbytes(weights)
    assert any(k.endswith(".U") for k in result.upload)
    zero = fedkd.svd_compress({k: torch.zeros_like(v) for k, v in weights.items()}, 0.95)
    new_state, new_broadcast = fedkd.aggregate(ctx, server_state, [Upload(0, result.upload, 3.0), Upload(1, zero, 1.0)])
    update = fedkd.svd_decompress(result.upload, weights)
    for key in weights:
        assert torch.allclose(new_broadcast[key], weights[key] + 0.75 * update[key], atol=1e-6)
    assert float(new_state[fedkd.ROUND]) == 1
    assert float(new_broadcast[fedkd.ENERGY]) == pytest.approx(fedkd.energy_threshold(ctx, 2))


def test_adaptive_mutual_loss_reaches_both_models_and_weights_distillation_by_correctness(make_context, make_data):
    ctx = make_context()
    data = make_data(n=8)
    pair = ModelPair(ctx.new_model("cnn2", seed=1), ctx.new_model("cnn5", seed=2))
    fedkd.adaptive_mutual_loss(1.0)(pair, data.train_x, data.train_y).backward()
    for model in (pair.local_model, pair.shared_model):
        assert all(p.grad is not None for p in model.parameters())
    # with identical models every distillation term is zero: the loss is the two task losses
    twin = ModelPair(ctx.new_model("cnn5", seed=3), ctx.new_model("cnn5", seed=3))
    ce = torch.nn.functional.cross_entropy(twin.local_model(data.train_x), data.train_y)
    assert torch.allclose(fedkd.adaptive_mutual_loss(1.0)(twin, data.train_x, data.train_y), 2 * ce, atol=1e-5)
