"""FML: mutual learning trains both models; the shared model is FedAvg'd."""

import pytest
import torch

from pfedlora.algorithms import fml
from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.distillation import ModelPair
from pfedlora.config import build_config
from pfedlora.errors import UserError


def test_mutual_loss_sends_gradients_to_both_models_including_through_the_kl(make_context, make_data):
    ctx = make_context(model_pool=["cnn1", "cnn3"])
    data = make_data(n=8)
    pair = ModelPair(ctx.new_model("cnn1", seed=1), ctx.new_model("cnn5", seed=2))
    # α = β = 0: only the KL terms remain, so any gradient comes from mutual distillation
    fml.mutual_loss(alpha=0.0, beta=0.0)(pair, data.train_x, data.train_y).backward()
    for model in (pair.local_model, pair.shared_model):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_client_trains_private_and_shared_model_and_uploads_the_shared_one(make_context, make_data):
    ctx = make_context(model_pool=["cnn1", "cnn5"])
    assert fml.shared_arch(ctx) == "cnn5"
    server_state, broadcast = fml.init_server(ctx)
    state = fml.init_client(ctx, 0)
    result = fml.client_update(ctx, 0, state, broadcast, make_data(), torch.Generator().manual_seed(0))
    assert result.upload.keys() == broadcast.keys()
    assert any(not torch.equal(result.upload[k], broadcast[k]) for k in broadcast)
    assert any(not torch.equal(result.state[k], state[k]) for k in state)
    _, new_broadcast = fml.aggregate(ctx, server_state, [Upload(0, result.upload, 1.0), Upload(1, broadcast, 1.0)])
    key = "fc1.weight"
    assert torch.allclose(new_broadcast[key], (result.upload[key] + broadcast[key]) / 2)
    assert fml.personalized_model(ctx, 0, result.state, new_broadcast).fc1.out_features == 2000  # cnn1: private


def test_shared_model_is_configurable(make_context):
    assert fml.shared_arch(make_context(fml={"shared_model": "cnn2"})) == "cnn2"


def test_an_unknown_shared_model_is_a_one_line_config_error():
    for section in ("fml", "fedkd"):
        with pytest.raises(UserError, match=f"{section}.shared_model: unknown model 'vgg'; valid: cnn1"):
            build_config({section: {"shared_model": "vgg"}})


def _pair_and_batch(make_context, make_data):
    ctx = make_context()
    data = make_data(n=8)
    return ModelPair(ctx.new_model("cnn2", seed=1), ctx.new_model("cnn5", seed=2)), data.train_x, data.train_y


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_alpha_weighs_the_private_models_loss_and_beta_the_shared_models(make_context, make_data):
    """Fails if α and β are swapped: each model's gradient is its own loss's."""
    from pfedlora.algorithms.distillation import distillation_kl

    pair, x, y = _pair_and_batch(make_context, make_data)
    fml.mutual_loss(alpha=0.9, beta=0.2)(pair, x, y).backward()
    got_local, got_shared = _grads(pair.local_model), _grads(pair.shared_model)
    pair.zero_grad()
    local_logits, shared_logits = pair.local_model(x), pair.shared_model(x)
    F = torch.nn.functional
    (0.9 * F.cross_entropy(local_logits, y) + 0.1 * distillation_kl(local_logits, shared_logits)).backward()
    for got, expected in zip(got_local, _grads(pair.local_model)):
        assert torch.allclose(got, expected, atol=1e-6)
    pair.zero_grad()
    shared_logits = pair.shared_model(x)
    (0.2 * F.cross_entropy(shared_logits, y) + 0.8 * distillation_kl(shared_logits, local_logits.detach())).backward()
    for got, expected in zip(got_shared, _grads(pair.shared_model)):
        assert torch.allclose(got, expected, atol=1e-6)


def test_the_kl_target_is_detached(make_context, make_data):
    """With α = 1 the private model's loss is CE alone, so its gradient must be CE's: a KL whose
    target were not detached would push the shared model's distillation into the private model."""
    pair, x, y = _pair_and_batch(make_context, make_data)
    fml.mutual_loss(alpha=1.0, beta=0.0)(pair, x, y).backward()
    got = _grads(pair.local_model)
    pair.zero_grad()
    torch.nn.functional.cross_entropy(pair.local_model(x), y).backward()
    assert all(torch.equal(a, b) for a, b in zip(got, _grads(pair.local_model)))


def test_aggregation_weights_shared_models_by_sample_counts(make_context):
    ctx = make_context(model_pool=["cnn1", "cnn5"])
    server_state, broadcast = fml.init_server(ctx)
    a = {k: torch.zeros_like(v) for k, v in broadcast.items()}
    b = {k: torch.full_like(v, 4.0) for k, v in broadcast.items()}
    _, new_broadcast = fml.aggregate(ctx, server_state, [Upload(0, a, 30.0), Upload(1, b, 10.0)])
    for key in broadcast:
        assert torch.allclose(new_broadcast[key], torch.full_like(broadcast[key], 1.0))  # (30·0 + 10·4) / 40
