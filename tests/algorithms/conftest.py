"""Small contexts and random client data for the algorithm unit tests (no dataset needed)."""

import pytest
import torch

from pfedlora.algorithms.base import ClientData, FederationContext
from pfedlora.config import build_config


@pytest.fixture
def make_context():
    def make(**overrides):
        config = build_config({"num_clients": 2, "rounds": 5, "train": {"batch_size": 16, "lr": 0.05}, **overrides})
        return FederationContext(config, (1, 32, 32), 10, torch.device("cpu"))

    return make


@pytest.fixture
def make_data():
    def make(n=48, seed=0, classes=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, 32, 32, generator=g)
        y = torch.tensor(classes)[torch.randint(0, len(classes), (n,), generator=g)]
        return ClientData(x, y, x[:8], y[:8])

    return make


@pytest.fixture
def check_class_stats_rules(make_context, make_data):
    """``{section}.class_stats`` (FedGH, FedTGP): under ``last_epoch`` the local model trains bit for bit
    as under ``after_training``; with weights that do not move the recorded means are the separate
    pass's (up to float rounding), with weights that move they differ; ``last_epoch`` counts fewer
    FLOPs. Returns the results by (rule, lr) and the last context."""

    def check(module, section: str, means_key: str, counts_key: str, broadcast=None):
        data = make_data(n=70)
        results = {}
        for rule in ("after_training", "last_epoch"):
            for lr in (1e-30, 0.5):
                ctx = make_context(train={"batch_size": 16, "lr": lr, "local_epochs": 2},
                                   **{section: {"class_stats": rule}})
                _, initial = module.init_server(ctx)
                results[rule, lr] = module.client_update(ctx, 0, module.init_client(ctx, 0),
                                                         initial if broadcast is None else broadcast, data,
                                                         torch.Generator().manual_seed(0))
        for lr in (1e-30, 0.5):
            a, b = results["after_training", lr].state, results["last_epoch", lr].state
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        still = results["after_training", 1e-30].upload, results["last_epoch", 1e-30].upload
        assert torch.equal(still[0][counts_key], still[1][counts_key])
        assert torch.allclose(still[0][means_key], still[1][means_key], rtol=0, atol=1e-5)
        moved = results["after_training", 0.5].upload, results["last_epoch", 0.5].upload
        assert not torch.allclose(moved[0][means_key], moved[1][means_key], atol=1e-3)
        flops = {rule: sum(s.flops for s in results[rule, 0.5].stats) for rule in ("after_training", "last_epoch")}
        assert flops["last_epoch"] < flops["after_training"]  # no pass after training
        return results, ctx

    return check
