"""The tests every algorithm should have, for the FedProx example: with its federated term off
(mu = 0) it is the algorithm it extends (FedAvg) bit for bit; on, it differs, and it keeps clients
nearer the global model."""

import torch

from pfedlora.config import build_config
from pfedlora.federation.simulation import Federation
from pfedlora.registry import get_algorithm

DOCUMENT = {"num_clients": 3, "model_pool": ["cnn3"], "partition": {"kind": "iid"},
            "train": {"batch_size": 32, "local_epochs": 2}, "engine": {"workers": 1},
            "dataset": {"max_train_samples": 300, "max_test_samples": 90}}


def _one_update(algorithm: str, mu: float) -> tuple[dict, dict]:
    config = build_config(DOCUMENT | {"algorithm": algorithm, "fedprox": {"mu": mu}})
    federation = Federation.build(config)
    algo, ctx = get_algorithm(algorithm), federation.context
    _, broadcast = algo.init_server(ctx)
    result = algo.client_update(ctx, 0, algo.init_client(ctx, 0), broadcast, federation.clients[0],
                                torch.Generator().manual_seed(7))
    return broadcast, result.upload


def test_mu_zero_is_fedavg_bit_for_bit():
    _, prox = _one_update("fedprox", 0.0)
    _, fedavg = _one_update("fedavg", 0.0)
    assert prox.keys() == fedavg.keys()
    assert all(torch.equal(prox[name], fedavg[name]) for name in prox)


def test_the_proximal_term_pulls_the_update_towards_the_global_model():
    start, free = _one_update("fedprox", 0.0)
    _, held = _one_update("fedprox", 1.0)
    assert any(not torch.equal(free[name], held[name]) for name in free)

    def distance(upload: dict) -> float:
        return sum(float(((upload[n].float() - start[n].float()) ** 2).sum()) for n in upload
                   if upload[n].is_floating_point() and "running" not in n)

    assert distance(held) < distance(free)


def test_a_heterogeneous_pool_is_refused_in_one_line():
    import pytest

    from pfedlora.errors import UserError

    with pytest.raises(UserError, match="fedprox shares the whole model") as error:
        build_config({"algorithm": "fedprox", "model_pool": ["cnn1", "cnn2"]})
    assert "\n" not in str(error.value)
