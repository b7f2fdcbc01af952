"""Which clients take part in a round: one rule for every runtime and for the privacy accountant."""

from __future__ import annotations

import numpy as np

from pfedlora.algorithms.base import derive_seed
from pfedlora.config import Config


def sample_clients(config: Config, round_index: int) -> list[int]:
    """The clients selected in ``round_index`` (1-based): ``max(1, round(fraction * N))`` of them."""
    count = max(1, int(round(config.fraction * config.num_clients)))
    rng = np.random.default_rng(derive_seed(config.seed, "round", round_index))
    return sorted(int(k) for k in rng.choice(config.num_clients, size=count, replace=False))
