"""Name -> local model builder. ``model_pool`` entries in the config are names from here."""

from __future__ import annotations

from collections.abc import Callable

from typing import Annotated, Any

from pydantic import AfterValidator

from torch import nn

from pfedlora.errors import UserError
from pfedlora.models.cnn import CNN, CNN_SPECS
from pfedlora.models.convnets import CONVNET_BUILDERS
from pfedlora.models.families import build_member, member_kind, parse_member
from pfedlora.models.text import TEXT_MODEL_SPECS

ModelBuilder = Callable[[int, int, int], nn.Module]


def _cnn_builder(name: str) -> ModelBuilder:
    spec = CNN_SPECS[name]
    return lambda in_channels, num_classes, image_size: CNN(spec, in_channels, num_classes, image_size)


MODEL_BUILDERS: dict[str, ModelBuilder] = {**{name: _cnn_builder(name) for name in CNN_SPECS}, **CONVNET_BUILDERS}


def model_names() -> list[str]:
    return sorted(MODEL_BUILDERS) + sorted(TEXT_MODEL_SPECS)


def known_model(name: str) -> str:
    """``name`` if it is a model of the registry; ValueError (one line, the valid names) otherwise."""
    if name not in model_names() and parse_member(name) is None:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(model_names())}, or an HtFLlib family member "
                         "htfl_<architecture> (see model_family)")
    return name


# a settings field naming a model (e.g. an algorithm's shared model), checked when the config is read
ModelName = Annotated[str, AfterValidator(known_model)]


def is_text_model(name: str) -> bool:
    return name in TEXT_MODEL_SPECS or member_kind(name) == "text"


def build_model(name: str, in_channels: int, num_classes: int, image_size: int = 32, text: Any = None) -> nn.Module:
    """Build local model ``name``; it has ``represent(x)`` (B x 500) and ``head`` (500 -> classes).

    Text models (``minilm_l*``, ``tf_d*``) need ``text``, the dataset's
    :class:`~pfedlora.data.text.TextSpec`; CNNs need image input (``text`` is None).
    """
    if parse_member(name) is not None:  # an HtFLlib family member (pfedlora.models.families)
        try:
            return build_member(name, (in_channels, image_size, image_size), num_classes, text=text)
        except ValueError as error:
            raise UserError(str(error)) from None
    if name in TEXT_MODEL_SPECS:
        if text is None:
            raise UserError(f"model {name!r} is a text model but the dataset is images; use a CNN ({', '.join(sorted(MODEL_BUILDERS))})")
        from pfedlora.models.text import build_text_model

        return build_text_model(name, text, num_classes)
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(model_names())}") from None
    if text is not None:
        raise UserError(f"model {name!r} is an image model but the dataset is text; use {', '.join(sorted(TEXT_MODEL_SPECS))}")
    return builder(in_channels, num_classes, image_size)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
