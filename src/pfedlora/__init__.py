"""pfedlora: model-heterogeneous personalized federated learning with LoRA-style adapters."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_personalized(path: Any) -> Any:
    """A client model written by ``pfedlora export``, ready in eval mode (see pfedlora.export)."""
    from pfedlora.export import load_personalized as load

    return load(path)
