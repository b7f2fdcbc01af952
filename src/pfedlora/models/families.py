"""HtFLlib's model families by name (``system/main.py``): which architectures a federation mixes.

Client ``i`` of a family of ``k`` members gets member ``i mod k`` (and, in ``HtFE-img-8-HtC-img-4``,
head ``i mod 4``), as HtFLlib assigns them. Every member produces a representation of the family's
shared width ``feature_dim`` (HtFLlib's ``--feature_dim``, default 512) and has a ``head`` on it
(:mod:`pfedlora.models.split`).

Members are registry names ``htfl_<architecture>[_f<feature_dim>][_head<hidden>]``: the suffixes
are present only when the width is not 512 or the head has a hidden layer, so e.g. ``htfl_resnet18``
is HtFLlib's ResNet-18 at width 512 with a ``Linear(512, classes)`` head and
``htfl_resnet18_f256_head128`` the same network pooled to 256 with a ``256 -> 128 -> classes`` head.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from pfedlora.models.resnets import RESNET_LAYOUTS
from pfedlora.models.sensor import HAR_LAYOUTS

DEFAULT_FEATURE_DIM = 512
PREFIX = "htfl_"

_IMG_CNN, _GOOGLENET, _MOBILENET = "cnn", "googlenet", "mobilenet_v2"
_RES = {depth: f"resnet{depth}" for depth in (4, 6, 8, 10, 18, 34, 50, 101, 152)}
_IMG_8 = [_IMG_CNN, _GOOGLENET, _MOBILENET, _RES[18], _RES[34], _RES[50], _RES[101], _RES[152]]
_TEXT_4 = ["fasttext", "text_lr", "lstm", "bilstm"]


def _transformers(pairs: list[tuple[int, int]]) -> list[str]:
    return [f"transformer_l{layers}_h{heads}" for layers, heads in pairs]


@dataclass(frozen=True)
class Family:
    members: list[str]  # architectures (registry names without the prefix and suffixes)
    heads: list[int | None] | None = None  # HtC families: hidden width of each head (None: a plain Linear)
    kind: str = "image"  # image, text, sensor or vector (flattened features)


# HtFLlib's system/main.py, in its order
FAMILIES: dict[str, Family] = {
    "HtFE-img-2": Family([_IMG_CNN, _RES[18]]),
    "HtFE-img-3": Family([_RES[10], _RES[18], _RES[34]]),
    "HtFE-img-4": Family([_IMG_CNN, _GOOGLENET, _MOBILENET, _RES[18]]),
    "HtFE-img-5": Family([_GOOGLENET, _MOBILENET, _RES[18], _RES[34], _RES[50]]),
    "HtFE-img-8": Family(list(_IMG_8)),
    "HtFE-img-9": Family([_RES[d] for d in (4, 6, 8, 10, 18, 34, 50, 101, 152)]),
    # Head(hidden_dims=[512]), [512, 512], [512, 256], [512, 128]: the first width is feature_dim
    "HtFE-img-8-HtC-img-4": Family(list(_IMG_8), heads=[None, 512, 256, 128]),
    "Res34-HtC-img-4": Family([_RES[34]], heads=[None, 512, 256, 128]),
    "HtM-img-10": Family([*_IMG_8, "vit_b16", "vit_b32"]),
    "HtFE-txt-2": Family(["fasttext", "text_lr"], kind="text"),
    "HtFE-txt-4": Family(list(_TEXT_4), kind="text"),
    "HtFE-txt-5-1": Family(_transformers([(1, 8), (2, 8), (4, 8), (8, 8), (16, 8)]), kind="text"),
    "HtFE-txt-5-2": Family(_transformers([(4, 1), (4, 2), (4, 4), (4, 8), (4, 16)]), kind="text"),
    "HtFE-txt-5-3": Family(_transformers([(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)]), kind="text"),
    "HtFE-txt-6": Family(["fasttext", "lstm", "bilstm", "transformer_l2_h8", "text_lr", "gru"], kind="text"),
    "MLPs": Family(["mlp", "mlp500", "mlp1000x500", "mlp1000x500x200"], kind="vector"),
    "MLP_1layer": Family(["mlp200", "mlp500"], kind="vector"),
    "MLP_layers": Family(["mlp500", "mlp1000x500", "mlp1000x500x200"], kind="vector"),
    "HtFE-sen-2": Family(["harcnn_s1", "harcnn_s2"], kind="sensor"),
    "HtFE-sen-3": Family(["harcnn_s1", "harcnn_s2", "harcnn_s3"], kind="sensor"),
    "HtFE-sen-5": Family(["harcnn_s1", "harcnn_s2", "harcnn_s3", "harcnn1_s1", "harcnn3_s1"], kind="sensor"),
    "HtFE-sen-8": Family(["harcnn_s1", "harcnn_s2", "harcnn_s3", "harcnn1_s1", "harcnn1_s2", "harcnn1_s3",
                          "harcnn3_s1", "harcnn3_s2"], kind="sensor"),
}

_MEMBER = re.compile(r"htfl_(?P<arch>[a-z0-9_]+?)(?:_f(?P<dim>\d+))?(?:_head(?P<head>\d+))?")
_IMAGE_ARCHS = {_IMG_CNN, _GOOGLENET, _MOBILENET, "vit_b16", "vit_b32", *RESNET_LAYOUTS}
_TEXT_ARCH = re.compile(r"fasttext|text_lr|lstm|bilstm|gru|transformer_l\d+_h\d+")
_SENSOR_ARCH = re.compile(rf"(?P<net>{'|'.join(HAR_LAYOUTS)})_s(?P<stride>\d)")
_MLP_ARCH = re.compile(r"mlp(?P<hidden>\d+(?:x\d+)*)?")


@dataclass(frozen=True)
class Member:
    arch: str
    feature_dim: int = DEFAULT_FEATURE_DIM
    head_hidden: int | None = None

    @property
    def kind(self) -> str:
        if self.arch in _IMAGE_ARCHS:
            return "image"
        if _TEXT_ARCH.fullmatch(self.arch):
            return "text"
        if _SENSOR_ARCH.fullmatch(self.arch):
            return "sensor"
        return "vector"

    @property
    def name(self) -> str:
        dim = "" if self.feature_dim == DEFAULT_FEATURE_DIM else f"_f{self.feature_dim}"
        head = "" if self.head_hidden is None else f"_head{self.head_hidden}"
        return f"{PREFIX}{self.arch}{dim}{head}"


def _known_arch(arch: str) -> bool:
    return (arch in _IMAGE_ARCHS or any(p.fullmatch(arch) for p in (_TEXT_ARCH, _SENSOR_ARCH, _MLP_ARCH)))


def parse_member(name: str) -> Member | None:
    """The family member a registry name denotes, or None when ``name`` is not one."""
    match = _MEMBER.fullmatch(name)
    if match is None or not _known_arch(match["arch"]):
        return None
    dim = int(match["dim"]) if match["dim"] else DEFAULT_FEATURE_DIM
    head = int(match["head"]) if match["head"] else None
    if dim < 1 or (match["dim"] and dim == DEFAULT_FEATURE_DIM) or head == 0:
        return None  # one name per model: the default width has no suffix
    return Member(match["arch"], dim, head)


def family_names() -> list[str]:
    return list(FAMILIES)


def family_pool(family: str, feature_dim: int = DEFAULT_FEATURE_DIM) -> list[str]:
    """The registry names clients take round-robin (client i gets entry i mod len): the members, and
    in HtC families every (member i mod k, head i mod h) for i < lcm(k, h)."""
    spec = FAMILIES[family]
    if spec.heads is None:
        return [Member(arch, feature_dim).name for arch in spec.members]
    period = math.lcm(len(spec.members), len(spec.heads))
    return [Member(spec.members[i % len(spec.members)], feature_dim, spec.heads[i % len(spec.heads)]).name
            for i in range(period)]


def head_shape(name: str) -> str:
    """The layout of model ``name``'s head (what an algorithm averaging heads must find the same on
    every client): the library's own models have ``Linear(500, classes)``."""
    member = parse_member(name)
    if member is None:
        return "Linear(500, classes)"
    d, hidden = member.feature_dim, member.head_hidden
    if member.arch in ("vit_b16", "vit_b32"):
        return f"Linear({d}, 768) -> Tanh -> Linear(768, classes)"
    return f"Linear({d}, classes)" if hidden is None else f"Linear({d}, {hidden}) -> ReLU -> Linear({hidden}, classes)"


def member_kind(name: str) -> str | None:
    member = parse_member(name)
    return None if member is None else member.kind


def build_member(name: str, input_shape: tuple[int, ...], num_classes: int, text: Any = None) -> nn.Module:
    """Build family member ``name`` for inputs of ``input_shape`` (without the batch dimension)."""
    member = parse_member(name)
    if member is None:
        raise KeyError(f"unknown model {name!r}")
    dim, hidden, arch = member.feature_dim, member.head_hidden, member.arch
    if member.kind == "text":
        if text is None:
            raise ValueError(f"model {name!r} is a text model but the dataset is not text")
        from pfedlora.models.text_families import text_model

        return text_model(arch, text, num_classes, dim, hidden)
    if text is not None:
        raise ValueError(f"model {name!r} reads {member.kind} inputs but the dataset is text")
    channels, size = input_shape[0], input_shape[-1]
    if member.kind == "sensor":
        from pfedlora.models.sensor import harcnn

        match = _SENSOR_ARCH.fullmatch(arch)
        assert match is not None
        return harcnn(match["net"], int(match["stride"]), channels, size, num_classes, dim, hidden)
    if member.kind == "vector":
        from pfedlora.models.small_models import amazon_mlp

        match = _MLP_ARCH.fullmatch(arch)
        assert match is not None
        widths = tuple(int(w) for w in match["hidden"].split("x")) if match["hidden"] else ()
        return amazon_mlp(widths, input_shape, num_classes, dim, hidden)
    if arch in RESNET_LAYOUTS:
        from pfedlora.models.resnets import resnet

        return resnet(arch, channels, num_classes, dim, hidden)
    if arch == _GOOGLENET:
        from pfedlora.models.googlenet import googlenet

        return googlenet(channels, num_classes, dim, hidden)
    if arch == _MOBILENET:
        from pfedlora.models.mobilenet_v2 import mobilenet_v2

        return mobilenet_v2(channels, num_classes, dim, hidden)
    if arch == _IMG_CNN:
        from pfedlora.models.small_models import fedavg_cnn

        return fedavg_cnn(channels, num_classes, size, dim, hidden)
    from pfedlora.models.vit import vit  # vit_b16, vit_b32

    if hidden is not None:
        raise ValueError(f"{name!r}: ViT members have HtFLlib's own head; no _head suffix")
    return vit(16 if arch == "vit_b16" else 32, channels, num_classes, size, dim)
