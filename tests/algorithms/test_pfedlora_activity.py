"""pFedLoRA's adapter activity (Algorithm.evaluation_metrics): adapter_share and adapter_flips, per
client and as metrics.csv / summary.json columns; the adapter step's own lr and weight decay."""

import csv

import pytest
import torch

from pfedlora.algorithms import pfedlora
from pfedlora.algorithms.base import prefixed
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.simulation import resume, run


def _metrics(ctx, data, state=None, broadcast=None, client_id=0):
    broadcast = broadcast if broadcast is not None else pfedlora.init_server(ctx)[1]
    state = state if state is not None else pfedlora.init_client(ctx, client_id)
    return pfedlora.evaluation_metrics(ctx, client_id, state, broadcast, data)


@pytest.mark.parametrize("adapter", [
    {"combine": "additive", "zero_init": True},
    {"combine": "additive", "zero_init": True, "input_pool": 2},
    {"placement": "head"},  # B starts at zero
])
def test_a_zero_initialised_adapter_has_share_0_and_flips_0(make_context, make_data, adapter):
    ctx = make_context(adapter=adapter)
    assert _metrics(ctx, make_data()) == {"adapter_share": 0.0, "adapter_flips": 0.0}


@pytest.mark.parametrize("adapter", [{"combine": "additive", "zero_init": True, "mu": 1.0}, {"placement": "head", "mu": 1.0}])
def test_a_large_adapter_has_a_large_share_and_flips_predictions(make_context, make_data, adapter):
    ctx = make_context(adapter=adapter)
    _, broadcast = pfedlora.init_server(ctx)
    large = {name: torch.randn(t.shape, generator=torch.Generator().manual_seed(3)) * 5 for name, t in broadcast.items()}
    metrics = _metrics(ctx, make_data(n=64), broadcast=large)
    assert metrics["adapter_share"] > 100  # the adapter's term outweighs the local model's
    assert metrics["adapter_flips"] > 0


def _direct(local_out, adapter_out, mu, convex):
    local_term = (1 - mu) * local_out if convex else local_out
    full = local_term + mu * adapter_out
    share = 100 * torch.linalg.norm(mu * adapter_out) / torch.linalg.norm(local_term)
    flips = 100 * (full.argmax(1) != local_out.argmax(1)).double().mean()
    return float(share), float(flips)


@pytest.mark.parametrize("combine", ["convex", "additive"])
def test_the_metrics_equal_a_direct_computation_on_a_small_example(make_context, make_data, combine):
    ctx = make_context(adapter={"combine": combine, "mu": 0.4}, train={"eval_batch_size": 5, "batch_size": 16})
    data = make_data(n=48)  # 8 evaluation rows, in batches of 5
    _, broadcast = pfedlora.init_server(ctx)
    state = pfedlora.init_client(ctx, 1)
    model = pfedlora.personalized_model(ctx, 1, state, broadcast)
    with torch.no_grad():
        local_out, adapter_out = model.local_model(data.test_x), model.adapter(data.test_x)
    share, flips = _direct(local_out, adapter_out, 0.4, combine == "convex")
    metrics = pfedlora.evaluation_metrics(ctx, 1, state, broadcast, data)
    assert metrics["adapter_share"] == pytest.approx(share, rel=1e-5)
    assert metrics["adapter_flips"] == pytest.approx(flips)
    assert 0 < metrics["adapter_share"]
    # the model it measured is the one evaluation uses, unchanged
    with torch.no_grad():
        torch.testing.assert_close(pfedlora.personalized_model(ctx, 1, state, broadcast)(data.test_x),
                                   model.mix(local_out, adapter_out))


def test_the_head_delta_share_equals_a_direct_computation(make_context, make_data):
    ctx = make_context(adapter={"placement": "head", "mu": 0.7})
    data = make_data(n=40, seed=2)
    _, broadcast = pfedlora.init_server(ctx)
    broadcast = dict(broadcast, lora_B=torch.randn(broadcast["lora_B"].shape, generator=torch.Generator().manual_seed(1)))
    state = pfedlora.init_client(ctx, 0)
    model = pfedlora.personalized_model(ctx, 0, state, broadcast)
    with torch.no_grad():
        h = model.local_model.represent(data.test_x)
        head_out, delta = model.local_model.head(h), h @ broadcast["lora_A"].t() @ broadcast["lora_B"].t()
    share, flips = _direct(head_out, delta, 0.7, convex=False)
    metrics = pfedlora.evaluation_metrics(ctx, 0, state, broadcast, data)
    assert metrics["adapter_share"] == pytest.approx(share, rel=1e-5)
    assert metrics["adapter_flips"] == pytest.approx(flips)


def test_the_clients_own_adapter_is_measured_once_it_has_one(make_context, make_data):
    ctx = make_context(adapter={"combine": "additive", "zero_init": True})
    _, broadcast = pfedlora.init_server(ctx)  # zero: share 0
    own = {name: torch.randn(t.shape, generator=torch.Generator().manual_seed(4)) for name, t in broadcast.items()}
    state = pfedlora.init_client(ctx, 0) | prefixed(pfedlora.ADAPTER, own)
    assert _metrics(ctx, make_data(), state=state, broadcast=broadcast)["adapter_share"] > 0


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


SMALL = {"num_clients": 4, "rounds": 2, "model_pool": ["cnn5", "cnn4"], "train": {"batch_size": 32},
         "dataset": {"max_train_samples": 300, "max_test_samples": 90},
         "partition": {"min_samples": 5, "classes_per_client": 3}}


def test_the_simulator_writes_the_activity_columns_every_evaluated_round(tmp_path, interrupted_run):
    config = build_config(SMALL | {"adapter": {"combine": "additive", "zero_init": True, "mu": 1.0, "lr_scale": 5.0}})
    summary = run(config, tmp_path / "whole", log=lambda _: None)
    rows = _rows(tmp_path / "whole")
    assert [int(r["round"]) for r in rows] == [1, 2]
    shares = [float(r["adapter_share"]) for r in rows]
    flips = [float(r["adapter_flips"]) for r in rows]
    assert all(s > 0 for s in shares) and all(0 <= f <= 100 for f in flips)
    assert summary["final_adapter_share"] == pytest.approx(shares[-1], abs=1e-5)
    assert summary["final_adapter_flips"] == pytest.approx(flips[-1], abs=1e-5)
    # a resumed run has the same columns and values
    interrupted_run(config, tmp_path / "part", at_round=2)
    resumed = resume(tmp_path / "part", log=lambda _: None)
    assert resumed["final_adapter_share"] == summary["final_adapter_share"]
    assert [r["adapter_share"] for r in _rows(tmp_path / "part")] == [r["adapter_share"] for r in rows]


def test_other_algorithms_write_no_activity_columns(tmp_path):
    run(build_config(SMALL | {"algorithm": "standalone", "rounds": 1}), tmp_path / "s", log=lambda _: None)
    assert "adapter_share" not in _rows(tmp_path / "s")[0]


# ---- the adapter step's own learning rate and weight decay


def test_lr_scale_and_weight_decay_change_only_the_adapter_step(make_context, make_data):
    data = make_data()

    def update(**adapter):
        ctx = make_context(adapter={"combine": "additive", "zero_init": True, **adapter})
        return pfedlora.client_update(ctx, 0, pfedlora.init_client(ctx, 0), pfedlora.init_server(ctx)[1], data,
                                      torch.Generator().manual_seed(0))

    plain, scaled, no_decay = update(), update(lr_scale=10.0), update(weight_decay=0.0)
    for other in (scaled, no_decay):
        local = {k: v for k, v in other.state.items() if k.startswith(pfedlora.LOCAL)}
        for key, value in local.items():  # step 1 trains with the same (zero) adapter and train.lr
            assert torch.equal(value, plain.state[key]), key
        assert any(not torch.equal(other.upload[k], plain.upload[k]) for k in plain.upload)
    start = pfedlora.init_server(make_context(adapter={"combine": "additive", "zero_init": True}))[1]
    moved = lambda r: sum(float((v - start[k]).abs().sum()) for k, v in r.upload.items())
    assert moved(scaled) > 3 * moved(plain)


def test_mu_above_1_needs_additive_and_lr_scale_needs_the_iterative_schedule():
    assert build_config({"adapter": {"combine": "additive", "mu": 4.0}}).adapter.mu == 4.0
    with pytest.raises(UserError, match="mu 4.0 > 1 with combine convex"):
        build_config({"adapter": {"mu": 4.0}})
    with pytest.raises(UserError, match="synchronous"):
        build_config({"adapter": {"schedule": "synchronous", "lr_scale": 2.0}})
