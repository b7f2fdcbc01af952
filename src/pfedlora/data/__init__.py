"""Datasets and their partition among federated clients.

The names below load on first use (PEP 562): they import torch, and the config (which reads only
:mod:`pfedlora.data.options`) must not, so a bad config fails in well under a second."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pfedlora.data.datasets import ArrayDataset, load_dataset
    from pfedlora.data.partition import ClientSplit, partition_clients, partition_counts

__all__ = ["ArrayDataset", "ClientSplit", "load_dataset", "partition_clients", "partition_counts"]

_HOMES = {"ArrayDataset": "datasets", "load_dataset": "datasets",
          "ClientSplit": "partition", "partition_clients": "partition", "partition_counts": "partition"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"pfedlora.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'pfedlora.data' has no attribute {name!r}")
