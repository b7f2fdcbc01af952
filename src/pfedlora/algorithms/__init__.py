"""Algorithms: one module per algorithm, each exposing ``ALGORITHM`` (an :class:`Algorithm`).

Modules are imported lazily so the config can validate names without importing torch models.
"""

from __future__ import annotations

import importlib

from pfedlora.algorithms.base import Algorithm

# name -> module under pfedlora.algorithms
ALGORITHM_MODULES: dict[str, str] = {
    "pfedlora": "pfedlora",
    # baselines
    "standalone": "standalone",
    "lg_fedavg": "lg_fedavg",
    "fd": "fd",
    "fedproto": "fedproto",
    "fml": "fml",
    "fedkd": "fedkd",
    "fedgh": "fedgh",
    "fedavg": "fedavg",
}


def algorithm_names() -> list[str]:
    return list(ALGORITHM_MODULES)


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHM_MODULES:
        raise KeyError(f"unknown algorithm {name!r}; valid: {', '.join(algorithm_names())}")
    module = importlib.import_module(f"pfedlora.algorithms.{ALGORITHM_MODULES[name]}")
    return module.ALGORITHM


__all__ = ["Algorithm", "algorithm_names", "get_algorithm"]
