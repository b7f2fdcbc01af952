"""Algorithms: one module per algorithm, each declaring its settings and registering itself with
:mod:`pfedlora.registry` (built-ins by module path, third-party ones through the entry-point group
``pfedlora.algorithms``). Modules are imported on first use.
"""

from __future__ import annotations

from pfedlora import registry
from pfedlora.algorithms.base import Algorithm


def algorithm_names() -> list[str]:
    """Built-in algorithms in their order, then installed plugins."""
    return registry.names()


def get_algorithm(name: str) -> Algorithm:
    """The :class:`Algorithm` registered as ``name`` (UserError when unknown)."""
    return registry.get_algorithm(name)


__all__ = ["Algorithm", "algorithm_names", "get_algorithm"]
