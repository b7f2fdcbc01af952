"""FedMRL: the global branch is its federated term, the projector persists, only the global model travels.

"Federated term at zero" is ``fedmrl.global_weight = 0``: the local header then reads the local
representation alone and the global header's loss has weight 0, so nothing the federation shares
(the global model, through the fused representation and the Matryoshka loss) reaches the local
model's gradient. Its local models must then equal Standalone's bit for bit; at the paper's
weight 1 every client's must differ.
"""

import pytest
import torch

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import ClientData, FederationContext, Upload, spec_like, unprefixed
from pfedlora.algorithms.fedmrl import PROJECTOR, MatryoshkaModel, new_projector
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
