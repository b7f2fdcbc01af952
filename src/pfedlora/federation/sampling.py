"""Which clients take part in a round: one rule for every runtime and for the privacy accountant."""

from __future__ import annotations

import numpy as np

from pfedlora.algorithms.base import derive_seed
from pfedlora.config import Config


def sample_clients(config: Config, round_index: int) -> list[int]:
    """The clients selected in ``round_index`` (1-based): ``max(1, round(fraction * N))`` of them, a
    seeded draw; under central DP with partial participation a secret Poisson sample instead
    (:func:`pfedlora.federation.privacy.poisson_sample`: the sampler the accountant assumes)."""
    from pfedlora.federation.privacy import poisson_sample, poisson_sampled  # privacy imports this module

    if poisson_sampled(config):
        return poisson_sample(config, round_index)
    count = max(1, int(round(config.fraction * config.num_clients)))
    rng = np.random.default_rng(derive_seed(config.seed, "round", round_index))
    return sorted(int(k) for k in rng.choice(config.num_clients, size=count, replace=False))
