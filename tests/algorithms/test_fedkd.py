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


def test_the_adaptive_weight_is_one_over_the_sum_of_task_losses(make_context, make_data):
    """Fails if w is replaced by 1 (or by anything but 1 / (CE_t + CE_s))."""
    ctx = make_context()
    data = make_data(n=8)
    pair = ModelPair(ctx.new_model("cnn2", seed=1), ctx.new_model("cnn5", seed=2))
    x, y = data.train_x, data.train_y
    h_t, h_s = pair.local_model.represent(x), pair.shared_model.represent(x)
    logits_t, logits_s = pair.local_model.head(h_t), pair.shared_model.head(h_s)
    ce_t, ce_s = (torch.nn.functional.cross_entropy(z, y) for z in (logits_t, logits_s))
    from pfedlora.algorithms.distillation import distillation_kl

    transfer = (distillation_kl(logits_t, logits_s) + torch.nn.functional.mse_loss(h_t, h_s)
                + distillation_kl(logits_s, logits_t) + torch.nn.functional.mse_loss(h_s, h_t))
    expected = ce_t + ce_s + transfer / (ce_t + ce_s)
    got = fedkd.adaptive_mutual_loss(1.0)(pair, x, y)
    assert torch.allclose(got, expected, rtol=1e-5)
    assert not torch.allclose(got, ce_t + ce_s + transfer, rtol=1e-3)
    # kd_weight scales the transfer terms; 0 leaves the two task losses
    assert torch.allclose(fedkd.adaptive_mutual_loss(1.0, kd_weight=0.0)(pair, x, y), ce_t + ce_s)


def _upload(make_context, make_data):
    ctx = make_context(model_pool=["cnn1", "cnn5"])
    _, broadcast = fedkd.init_server(ctx)
    result = fedkd.client_update(ctx, 0, fedkd.init_client(ctx, 0), broadcast, make_data(),
                                 torch.Generator().manual_seed(0))
    return ctx, broadcast, result.upload


def test_an_upload_missing_factors_or_mixing_ranks_is_rejected_as_malformed(make_context, make_data):
    from pfedlora.federation.validation import UpdateValidator

    ctx, broadcast, upload = _upload(make_context, make_data)
    algorithm = fedkd.ALGORITHM
    spec, check = algorithm.expected_upload(ctx, broadcast), algorithm.upload_check(ctx, broadcast)
    validator = UpdateValidator(norm_factor=None)
    assert not validator.validate([Upload(0, upload, 1.0)], spec, broadcast, check).rejected
    factored = next(k[: -len(".U")] for k in upload if k.endswith(".U"))
    no_matrices = {k: v for k, v in upload.items() if not k.endswith((".U", ".S", ".V")) and v.dim() < 2}
    one_factor_gone = {k: v for k, v in upload.items() if k != f"{factored}.S"}
    ranks_differ = dict(upload) | {f"{factored}.S": upload[f"{factored}.S"][:-1]}
    both = dict(upload) | {f"{factored}.dense": broadcast[factored].clone()}
    for bad in (no_matrices, one_factor_gone, ranks_differ, both):
        report = validator.validate([Upload(0, bad, 1.0)], spec, broadcast, check)
        assert [r.reason for r in report.rejected] == ["malformed"], report.rejected
    # without the algorithm's rule the spec alone let the upload with no matrices through
    assert not validator.validate([Upload(0, no_matrices, 1.0)], spec, broadcast).rejected
