"""pFedLoRA's client update: the iterative schedule's frozen parts, the upload, aggregation."""

import pytest
import torch

from pfedlora.algorithms import pfedlora
from pfedlora.algorithms.base import ClientData, FederationContext, Upload, unprefixed
from pfedlora.algorithms.training import train_epochs
from pfedlora.config import build_config


def _context(**overrides):
    config = build_config({"num_clients": 2, "train": {"batch_size": 16, "lr": 0.05}, **overrides})
    return FederationContext(config, (1, 32, 32), 10, torch.device("cpu"))


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return ClientData(x, y, x[:8], y[:8])


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_changed(a, b):
    assert any(not torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("placement", ["branch", "head"])
def test_each_iterative_step_leaves_the_frozen_part_bit_for_bit_unchanged(placement):
    ctx = _context(adapter={"placement": placement})
    _, broadcast = pfedlora.init_server(ctx)
    state = pfedlora.init_client(ctx, 0)
    model = pfedlora.personalized_model(ctx, 0, state, broadcast)
    if placement == "head":  # B = 0 makes A's gradient zero; give the delta a non-zero start
        torch.nn.init.normal_(model.adapter.lora_B, std=0.1)
    data = _data()
    common = dict(epochs=1, train=ctx.config.train, generator=torch.Generator().manual_seed(0))

    local_before, adapter_before = _snapshot(model.local_model), _snapshot(model.adapter)
    train_epochs(model, model.local_model.parameters(), data.train_x, data.train_y, **common)
    _assert_same(_snapshot(model.adapter), adapter_before)
    _assert_changed(_snapshot(model.local_model), local_before)

    local_before, adapter_before = _snapshot(model.local_model), _snapshot(model.adapter)
    train_epochs(model, model.adapter.parameters(), data.train_x, data.train_y, **common)
    _assert_same(_snapshot(model.local_model), local_before)
    _assert_changed(_snapshot(model.adapter), adapter_before)


def test_client_update_uploads_only_the_trained_adapter():
    ctx = _context()
    _, broadcast = pfedlora.init_server(ctx)
    state = pfedlora.init_client(ctx, 1)
    result = pfedlora.client_update(ctx, 1, state, broadcast, _data(), torch.Generator().manual_seed(1))
    assert result.upload.keys() == broadcast.keys()
    assert {k: v.shape for k, v in result.upload.items()} == {k: v.shape for k, v in broadcast.items()}
    _assert_changed(result.upload, broadcast)
    _assert_changed(unprefixed("local_model.", result.state), unprefixed("local_model.", state))
    assert result.weight == 48
    assert [s.module for s in result.stats] == ["local_model", "adapter"]
    assert all(s.num_samples == 48 and s.num_steps == 3 for s in result.stats)


def test_synchronous_schedule_trains_both_in_one_pass():
    ctx = _context(adapter={"schedule": "synchronous"})
    _, broadcast = pfedlora.init_server(ctx)
    result = pfedlora.client_update(ctx, 0, pfedlora.init_client(ctx, 0), broadcast, _data(),
                                    torch.Generator().manual_seed(0))
    assert [s.module for s in result.stats] == ["local_model+adapter"]
    _assert_changed(result.upload, broadcast)


def test_aggregate_is_the_sample_weighted_mean_of_adapters():
    ctx = _context()
    server_state, broadcast = pfedlora.init_server(ctx)
    a = {k: torch.zeros_like(v) for k, v in broadcast.items()}
    b = {k: torch.ones_like(v) for k, v in broadcast.items()}
    new_state, new_broadcast = pfedlora.aggregate(ctx, server_state, [Upload(0, a, 30.0), Upload(1, b, 10.0)])
    for key in broadcast:
        torch.testing.assert_close(new_broadcast[key], torch.full_like(broadcast[key], 0.25))
    same_state, _ = pfedlora.aggregate(ctx, new_state, [])
    _assert_same(same_state, new_state)


def test_clients_with_different_architectures_share_the_adapter_shape():
    ctx = _context()
    _, broadcast = pfedlora.init_server(ctx)
    results = [pfedlora.client_update(ctx, k, pfedlora.init_client(ctx, k), broadcast, _data(seed=k),
                                      torch.Generator().manual_seed(k)) for k in (0, 1)]
    assert ctx.client_arch(0) != ctx.client_arch(1)
    assert [{k: v.shape for k, v in r.upload.items()} for r in results][0] == {k: v.shape for k, v in results[1].upload.items()}
