"""Which clients take part in a round: one rule for every runtime and for the privacy accountant."""

from __future__ import annotations

import numpy as np

from pfedlora.algorithms.base import derive_seed
from pfedlora.config import Config
from pfedlora.federation.secure_noise import secure_uniform


def sample_clients(config: Config, round_index: int) -> list[int]:
    """The clients selected in ``round_index`` (1-based): ``max(1, round(fraction * N))`` of them, a
    seeded draw; under central DP with partial participation a secret Poisson sample instead
    (:func:`poisson_sample`: the sampler the accountant assumes)."""
    if poisson_sampled(config):
        return poisson_sample(config, round_index)
    count = max(1, int(round(config.fraction * config.num_clients)))
    rng = np.random.default_rng(derive_seed(config.seed, "round", round_index))
    return sorted(int(k) for k in rng.choice(config.num_clients, size=count, replace=False))


def sampling_rate(config: Config) -> float:
    """Expected clients per round over all clients: m/N with m = ``max(1, round(fraction x N))``."""
    return expected_clients(config) / config.num_clients


def expected_clients(config: Config) -> int:
    """m: the clients selected per round (fixed-size draw), or expected per round (Poisson, central DP)."""
    return max(1, int(round(config.fraction * config.num_clients)))


def poisson_sampled(config: Config) -> bool:
    """Central DP with partial participation: clients are Poisson-sampled from a secret source."""
    return config.privacy.mode == "central" and sampling_rate(config) < 1.0


def poisson_sample(config: Config, round_index: int) -> list[int]:
    """Central DP: every client independently with probability m/N, from a secret source (seeded from
    (seed, round) only with ``noise_source: seeded_insecure``). The accountant's subsampling
    amplification needs exactly this: a sample nobody outside the server can predict, so the secure
    draws come from a ChaCha20 keystream under a fresh OS key, not from a seeded generator."""
    if config.privacy.noise_source == "secure":
        draws = secure_uniform(config.num_clients)
    else:
        draws = np.random.default_rng(derive_seed(config.seed, "round", round_index)).random(config.num_clients)
    return [int(k) for k in np.flatnonzero(draws < sampling_rate(config))]
