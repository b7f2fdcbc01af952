"""Each baseline's federated term really acts, and switched off it is exactly Standalone.

For every baseline with a knowledge-transfer weight, two short runs on the bundled digits: one with
the paper's weight, whose clients' local models must differ from Standalone's on the same seed,
and one with the weight at 0, whose local models must equal Standalone's bit for bit (the same
initialisation, batches and steps: only the federated term may make a difference). LG-FedAvg and
FedGH have no weight: their only channel is the received header, so a client update that receives
its own header must equal Standalone's, and one that receives another header must not.
"""

import pytest
import torch

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import unprefixed
from pfedlora.config import build_config
from pfedlora.federation.simulation import ClientStore, Federation, client_generator, run_round

# 5 clients holding 4 classes each, so every class has about 2 holders (FD needs another holder)
SMALL = {"num_clients": 5, "rounds": 2, "partition": {"classes_per_client": 4},
         "dataset": {"max_train_samples": 500, "max_test_samples": 200},
         "train": {"batch_size": 32, "lr": 0.05}, "validation": {"norm_factor": None}}

# algorithm -> (the key of its transfer weight, the value that switches it off)
SWITCHES = {
    "fd": ("fd.gamma", 0.0),
    "fedproto": ("fedproto.lam", 0.0),
    "fml": ("fml.alpha", 1.0),  # the private model's loss: α·CE + (1 − α)·KL
    "fedkd": ("fedkd.kd_weight", 0.0),
}


def _local_models(algorithm: str, overrides: list[str] = ()) -> list[dict[str, torch.Tensor]]:
    config = build_config({**SMALL, "algorithm": algorithm}, list(overrides))
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    for round_index in range(1, config.rounds + 1):
        server_state, broadcast, _ = run_round(federation, store, server_state, broadcast, round_index)
    return [unprefixed("local_model.", store.get(k)) for k in range(config.num_clients)]


@pytest.fixture(scope="module")
def standalone():
    return _local_models("standalone")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algorithm", list(SWITCHES))
def test_the_federated_term_changes_every_clients_local_model(algorithm, standalone):
    models = _local_models(algorithm)
    assert all(not _same(mine, alone) for mine, alone in zip(models, standalone))


@pytest.mark.parametrize("algorithm", list(SWITCHES))
def test_with_the_federated_term_at_zero_the_run_is_standalone_bit_for_bit(algorithm, standalone):
    key, off = SWITCHES[algorithm]
    models = _local_models(algorithm, [f"{key}={off}"])
    assert all(_same(mine, alone) for mine, alone in zip(models, standalone))


@pytest.mark.parametrize("algorithm", ["lg_fedavg", "fedgh"])
def test_the_received_header_is_the_only_difference_from_standalone(algorithm):
    config = build_config({**SMALL, "algorithm": algorithm})
    federation = Federation.build(config)
    ctx, data = federation.context, federation.clients[1]
    method, alone = get_algorithm(algorithm), get_algorithm("standalone")
    state = method.init_client(ctx, 1)
    own_header = {name[len("local_model.head."):]: t for name, t in state.items() if name.startswith("local_model.head.")}
    _, global_header = method.init_server(ctx)
    expected = alone.client_update(ctx, 1, state, {}, data, client_generator(config, 1, 1)).state
    with_own = method.client_update(ctx, 1, state, own_header, data, client_generator(config, 1, 1)).state
    with_global = method.client_update(ctx, 1, state, global_header, data, client_generator(config, 1, 1)).state
    assert _same(unprefixed("local_model.", with_own), unprefixed("local_model.", expected))
    assert not _same(unprefixed("local_model.", with_global), unprefixed("local_model.", expected))


@pytest.mark.parametrize("algorithm", ["lg_fedavg", "fedgh"])
def test_lg_fedavg_and_fedgh_evaluate_with_the_local_or_the_global_header(algorithm):
    config = build_config({**SMALL, "algorithm": algorithm})
    federation = Federation.build(config)
    ctx, data = federation.context, federation.clients[0]
    method = get_algorithm(algorithm)
    _, broadcast = method.init_server(ctx)
    result = method.client_update(ctx, 0, method.init_client(ctx, 0), broadcast, data, client_generator(config, 1, 0))
    trained_header = {n[len("local_model.head."):]: t for n, t in result.state.items() if n.startswith("local_model.head.")}
    local = method.personalized_model(ctx, 0, result.state, broadcast)
    assert all(torch.equal(local.head.state_dict()[n], t) for n, t in trained_header.items())
    global_ctx = Federation.build(build_config({**SMALL, "algorithm": algorithm},
                                               [f"{algorithm}.evaluation=global_header"])).context
    evaluated = method.personalized_model(global_ctx, 0, result.state, broadcast)
    assert all(torch.equal(evaluated.head.state_dict()[n], t) for n, t in broadcast.items())
    assert not torch.equal(evaluated.head.weight, trained_header["weight"])
