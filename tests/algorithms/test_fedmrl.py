"""FedMRL: the global branch is its federated term, the projector persists, only the global model travels.

"Federated term at zero" is ``fedmrl.global_weight = 0``: the local header then reads the local
representation alone and the global header's loss has weight 0, so nothing the federation shares
(the global model, through the fused representation and the Matryoshka loss) reaches the local
model's gradient. Its local models must then equal Standalone's bit for bit; at the paper's
weight 1 every client's must differ.

The local model differing from Standalone's does not show that the global branch works (the private
projector alone makes it differ), so each of the two terms has its own tests, each checked to fail
when that term is removed from ``fedmrl.py`` (the global representation replaced by zeros in the
fused representation; the global header's CE dropped from ``matryoshka_loss``):

* the global representation: the local header's CE sends a gradient into the global extractor
  through the fused representation, and after a federated run every client's prediction depends on
  the aggregated global extractor;
* the global header's CE: the loss is the two CEs (by hand), it alone trains the global header, and
  without it the client's trained local model is another one.
"""

import pytest
import torch
import torch.nn.functional as F

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import ClientData, FederationContext, Upload, spec_like, unprefixed
from pfedlora.algorithms.fedmrl import PROJECTOR, MatryoshkaModel, matryoshka_loss, new_projector
from pfedlora.algorithms.training import train_epochs
from pfedlora.config import build_config
from pfedlora.federation.simulation import ClientStore, Federation, run_round
from pfedlora.federation.validation import UpdateValidator

SMALL = {"num_clients": 5, "rounds": 2, "partition": {"classes_per_client": 4},
         "dataset": {"max_train_samples": 500, "max_test_samples": 200},
         "train": {"batch_size": 32, "lr": 0.05}, "validation": {"norm_factor": None}}


def _local_models(algorithm: str, overrides: list[str] = ()) -> list[dict[str, torch.Tensor]]:
    config = build_config({**SMALL, "algorithm": algorithm}, list(overrides))
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        server_state, broadcast, _ = run_round(federation, store, server_state, broadcast, round_index)
    return [unprefixed("local_model.", store.get(k)) for k in range(config.num_clients)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def standalone():
    return _local_models("standalone")


def test_the_global_branch_changes_every_clients_local_model(standalone):
    models = _local_models("fedmrl")
    assert all(not _same(mine, alone) for mine, alone in zip(models, standalone))


def test_with_the_global_branch_at_zero_the_local_models_are_standalone_bit_for_bit(standalone):
    models = _local_models("fedmrl", ["fedmrl.global_weight=0"])
    assert all(_same(mine, alone) for mine, alone in zip(models, standalone))


def _context(**fedmrl) -> FederationContext:
    config = build_config({"algorithm": "fedmrl", "num_clients": 2, "model_pool": ["cnn4", "cnn5"],
                           "train": {"batch_size": 16, "lr": 0.05}, "fedmrl": fedmrl})
    return FederationContext(config, (1, 32, 32), 10, torch.device("cpu"))


def _data(seed: int = 0, n: int = 48) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return ClientData(x, y, x[:8], y[:8])


def _update(ctx, state, broadcast, seed=1):
    return get_algorithm("fedmrl").client_update(ctx, 0, state, broadcast, _data(), torch.Generator().manual_seed(seed))


def test_the_projector_is_trained_and_its_updates_persist_across_rounds():
    ctx = _context()
    method = get_algorithm("fedmrl")
    _, broadcast = method.init_server(ctx)
    initial = method.init_client(ctx, 0)
    first = _update(ctx, initial, broadcast).state
    # the client state carries the trained projector, not the initial one
    assert any(not torch.equal(first[k], initial[k]) for k in initial if k.startswith(PROJECTOR))
    # the next round starts from it: resetting it to the initial projector changes that round
    reset = {k: (initial[k] if k.startswith(PROJECTOR) else t) for k, t in first.items()}
    second, second_reset = _update(ctx, first, broadcast, seed=2), _update(ctx, reset, broadcast, seed=2)
    assert not _same(unprefixed("local_model.", second.state), unprefixed("local_model.", second_reset.state))
    assert not _same(second.upload, second_reset.upload)
    # and evaluation uses it
    x = _data().test_x
    with torch.no_grad():
        assert not torch.equal(method.personalized_model(ctx, 0, first, broadcast)(x),
                               method.personalized_model(ctx, 0, reset, broadcast)(x))


def test_broadcast_and_upload_are_the_narrowed_global_model_and_it_is_averaged():
    ctx = _context(sub_feature_dim=64)
    method = get_algorithm("fedmrl")
    _, broadcast = method.init_server(ctx)
    # the smallest pool model (cnn5) with a 64-d representation: its header reads 64 dimensions
    assert broadcast["fc2.weight"].shape == (64, 500) and broadcast["head.weight"].shape == (10, 64)
    assert method.expected_upload(ctx, broadcast) == spec_like(broadcast)
    result = _update(ctx, method.init_client(ctx, 0), broadcast)
    assert spec_like(result.upload) == spec_like(broadcast)
    assert not any(k.startswith(("local_model.", PROJECTOR)) for k in result.upload)
    projector = unprefixed(PROJECTOR, result.state)
    assert projector["weight"].shape == (500, 64 + 500)
    report = UpdateValidator(norm_factor=None).validate([Upload(0, result.upload, result.weight)],
                                                        method.expected_upload(ctx, broadcast), broadcast)
    assert not report.rejected
    # an upload of a global model with another d1 does not fit the spec
    other = method.init_server(_context(sub_feature_dim=32))[1]
    report = UpdateValidator(norm_factor=None).validate([Upload(1, other, 1.0)], method.expected_upload(ctx, broadcast),
                                                        broadcast)
    assert [r.reason for r in report.rejected] == ["shape"]
    # FedAvg of the uploads, so client-level DP and SecAgg+ apply
    assert method.averages_uploads(ctx.config)
    a, b = result.upload, {k: t + 1 for k, t in result.upload.items()}
    _, new = method.aggregate(ctx, broadcast, [Upload(0, a, 1.0), Upload(1, b, 3.0)])
    assert all(torch.allclose(new[k], a[k] + 0.75) for k in a)


def test_the_global_header_reads_the_first_sub_feature_dim_dimensions_of_the_fused_representation():
    ctx = _context(sub_feature_dim=16)
    method = get_algorithm("fedmrl")
    _, broadcast = method.init_server(ctx)
    model = method.personalized_model(ctx, 0, method.init_client(ctx, 0), broadcast)
    assert isinstance(model, MatryoshkaModel)
    x = _data().test_x
    with torch.no_grad():
        local_before, global_before = model.outputs(x)
        model.projector.weight[16:] += 1.0  # only the dimensions after the prefix
        local_after, global_after = model.outputs(x)
    assert torch.equal(global_before, global_after)
    assert not torch.equal(local_before, local_after)


def test_sub_feature_dim_is_bounded_by_the_representation():
    with pytest.raises(Exception):
        _context(sub_feature_dim=501)
    ctx = _context(sub_feature_dim=500)
    assert new_projector(ctx, 0, seed=0).weight.shape == (500, 1000)


def _global_extractor(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.global_model.named_parameters() if not n.startswith("head.")}


def test_the_loss_is_the_local_headers_ce_plus_the_global_headers_ce_on_the_fused_representation():
    ctx = _context(sub_feature_dim=64)
    method = get_algorithm("fedmrl")
    _, broadcast = method.init_server(ctx)
    model = method.personalized_model(ctx, 0, method.init_client(ctx, 0), broadcast)
    data = _data()
    x, y = data.train_x[:16], data.train_y[:16]
    with torch.no_grad():
        global_rep = model.global_model.represent(x)
        assert global_rep.shape == (16, 64) and global_rep.abs().sum() > 0
        fused = model.projector(torch.cat((global_rep, model.local_model.represent(x)), dim=1))
        expected = (F.cross_entropy(model.local_model.head(fused), y)
                    + F.cross_entropy(model.global_model.head(fused[:, :64]), y))
        assert torch.allclose(matryoshka_loss(model, x, y), expected, rtol=1e-6)


def test_the_local_headers_ce_reaches_the_global_extractor_through_the_fused_representation():
    ctx = _context(sub_feature_dim=64)
    method = get_algorithm("fedmrl")
    _, broadcast = method.init_server(ctx)
    model = method.personalized_model(ctx, 0, method.init_client(ctx, 0), broadcast)
    data = _data()
    local_logits, global_logits = model.outputs(data.train_x[:16])
    F.cross_entropy(local_logits, data.train_y[:16]).backward(retain_graph=True)  # the local header's term alone
    extractor = _global_extractor(model)
    assert extractor and all(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor.values())
    assert model.global_model.head.weight.grad is None  # the global header is not on this path
    model.zero_grad(set_to_none=True)
    F.cross_entropy(global_logits, data.train_y[:16]).backward()  # the global header's term alone
    assert model.global_model.head.weight.grad.abs().sum() > 0


def test_the_global_headers_ce_trains_the_global_header_and_changes_the_local_model():
    ctx = _context(sub_feature_dim=64)
    method = get_algorithm("fedmrl")
    _, broadcast = method.init_server(ctx)
    state = method.init_client(ctx, 0)
    result = _update(ctx, state, broadcast)
    # only the global header's CE reaches the global header: it moved
    assert not torch.equal(result.upload["head.weight"], broadcast["head.weight"])
    # the same training on the local header's CE alone: another local model, an unchanged global header
    model = method.personalized_model(ctx, 0, state, broadcast)
    data = _data()

    def local_only(module, x, y):
        return F.cross_entropy(module.outputs(x)[0], y)

    train_epochs(model, model.parameters(), data.train_x, data.train_y, epochs=ctx.config.train.local_epochs,
                 train=ctx.config.train, generator=torch.Generator().manual_seed(1), loss_fn=local_only,
                 name="local_model+projector+global_model")
    assert torch.equal(model.global_model.head.weight, broadcast["head.weight"])
    assert not _same(unprefixed("local_model.", result.state), model.local_model.state_dict())


def test_after_a_federated_run_the_aggregated_global_model_carries_both_terms():
    config = build_config({**SMALL, "algorithm": "fedmrl"})
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, initial = federation.algorithm.init_server(federation.context)
    broadcast = initial
    for round_index in range(1, config.rounds + 1):
        server_state, broadcast, _ = run_round(federation, store, server_state, broadcast, round_index)
    # the global header learned (only its CE trains it): not merely decayed, which would only scale it
    # (weight decay acts on a parameter whose gradient is zero)
    w0, w = initial["head.weight"].double().flatten(), broadcast["head.weight"].double().flatten()
    assert float((w - (w @ w0) / (w0 @ w0) * w0).norm() / w.norm()) > 1e-3
    # so did the global extractor (through the fused representation and that CE)
    assert any(not torch.equal(broadcast[k], initial[k]) for k in broadcast if not k.startswith("head."))
    # every client's prediction reads the aggregated global extractor: with the initial one it changes
    rolled_back = {k: (t if k.startswith("head.") else initial[k]) for k, t in broadcast.items()}
    method = federation.algorithm
    for k, client in enumerate(federation.clients):
        x = client.test_x[:32]
        with torch.no_grad():
            trained = method.personalized_model(federation.context, k, store.get(k), broadcast).eval()(x)
            rolled = method.personalized_model(federation.context, k, store.get(k), rolled_back).eval()(x)
        assert not torch.allclose(trained, rolled)
