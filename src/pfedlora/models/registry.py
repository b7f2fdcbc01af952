"""Name -> local model builder. ``model_pool`` entries in the config are names from here."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pfedlora.models.cnn import CNN, CNN_SPECS

ModelBuilder = Callable[[int, int, int], nn.Module]


def _cnn_builder(name: str) -> ModelBuilder:
    spec = CNN_SPECS[name]
    return lambda in_channels, num_classes, image_size: CNN(spec, in_channels, num_classes, image_size)


MODEL_BUILDERS: dict[str, ModelBuilder] = {name: _cnn_builder(name) for name in CNN_SPECS}


def model_names() -> list[str]:
    return sorted(MODEL_BUILDERS)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int = 32) -> nn.Module:
    """Build local model ``name``; it has ``represent(x)`` (B x 500) and ``head`` (500 -> classes)."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(model_names())}") from None
    return builder(in_channels, num_classes, image_size)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
