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
