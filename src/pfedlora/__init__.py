"""pfedlora: model-heterogeneous personalized federated learning with LoRA-style adapters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model is loaded
    from pfedlora.export import PersonalizedClassifier

# the one version number: pyproject.toml reads it (setuptools dynamic), `pfedlora --version` prints it
__version__ = "0.1.0"


def __getattr__(name: str):
    """``pfedlora.results`` after a plain ``import pfedlora`` (imported on first use: pandas, torch)."""
    if name == "results":
        import importlib

        return importlib.import_module("pfedlora.results")
    raise AttributeError(f"module 'pfedlora' has no attribute {name!r}")


def load_personalized(path: str | Path) -> PersonalizedClassifier:
    """A client model written by ``pfedlora export``, on the CPU in eval mode.

    Args:
        path: the ``client-K.json`` written by ``pfedlora export``, or the export folder when it
            holds one client (its ``client-K.safetensors`` is read beside it).

    Returns:
        The client's personalized model (for pFedLoRA: its local model with its adapter), a
        [PersonalizedClassifier][pfedlora.export.PersonalizedClassifier]: ``model(x)`` takes
        preprocessed tensors, ``model.predict(raw_inputs)`` raw images or texts.

    Raises:
        pfedlora.errors.UserError: a missing or malformed file (one line). Loading never runs code
            from the files (JSON + safetensors).

    Example:
        ```python
        import pfedlora

        model = pfedlora.load_personalized("exported/client-3.json")
        model.predict(["img/0001.png", "img/0002.png"])  # class indices
        ```
    """
    from pfedlora.export import load_personalized as load

    return load(path)
