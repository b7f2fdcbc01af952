"""The homogeneous low-rank adapter of pFedLoRA (Yi et al., arXiv 2310.13283).

Every client holds the same adapter architecture, derived from a reference local model:

* ``reduced`` (direct dimension reduction): the reference CNN with every hidden width cut to
  ``rank`` (conv filters, fc units), keeping input channels and classes.
* ``factorized`` (matrix decomposition): every conv/linear weight of the reference replaced by a
  rank-``rank`` product B.A, LoRA-style; a k x k conv becomes a k x k conv to ``rank`` channels
  followed by a 1 x 1 conv to the original width.

Two placements combine it with a client's local model F_k:

* ``branch``: the adapter sees the input; ``combine`` (``adapter.combine``) decides the prediction:
  ``convex`` (the default): (1 - mu) F_k(x) + mu A(x); ``additive`` (the LoRA reading):
  F_k(x) + mu A(x).
* ``head``: a rank-``rank`` LoRA delta on the (homogeneous) classification header:
  logits = (W_head + mu B A) h(x). B starts at zero so the delta starts at zero, as in LoRA.
  With this placement ``construction`` does not apply: the delta is always a B.A product, and the
  prediction is additive by construction (``combine: convex`` is refused by the config).

Options of the branch adapter (all off by default, so earlier results stay bit-identical):

* ``zero_init`` (:func:`zero_output_layer`): the output layer (the last Linear, weight and bias;
  for ``factorized`` the last factor) starts at exactly zero, so A(x) = 0 and, with additive
  combine, a fresh personalized model equals its local model bit for bit. Gradients still reach
  that last layer (its weight gradient is the upstream gradient times its non-zero input), so
  training starts, as LoRA's B = 0 does.
* ``input_pool`` (:class:`PooledInput`): the adapter reads the input average-pooled by 2 or 4 and
  is built for the smaller image, a cheap adapter (a rank-16 ``reduced`` adapter on a 2x pooled
  32 x 32 input costs a small fraction of the smallest CNN's training FLOPs).

:func:`factor_pairs` and :func:`lora_factor_pairs` name the (B, A) tensors whose product B.A is
the adapter's weight, for aggregating products instead of factors (``adapter.aggregation``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pfedlora.errors import UserError
from pfedlora.models.cnn import CNN, CNN_SPECS, CNNSpec
from pfedlora.models.families import member_kind
from pfedlora.models.registry import build_model


class LowRankLinear(nn.Sequential):
    """in -> rank (no bias) -> out: the weight is the rank-``rank`` product B.A."""

    def __init__(self, layer: nn.Linear, rank: int) -> None:
        super().__init__(
            nn.Linear(layer.in_features, rank, bias=False),
            nn.Linear(rank, layer.out_features, bias=layer.bias is not None),
        )


class LowRankConv2d(nn.Sequential):
    """k x k conv to ``rank`` channels, then a 1 x 1 conv to the original width."""

    def __init__(self, layer: nn.Conv2d, rank: int) -> None:
        super().__init__(
            nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, bias=False),
            nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None),
        )


def factorize(module: nn.Module, rank: int) -> nn.Module:
    """A copy of ``module`` with each Conv2d / Linear replaced by its rank-``rank`` factorization."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LowRankLinear(child, rank))
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, LowRankConv2d(child, rank))
        else:
            setattr(module, name, factorize(child, rank))
    return module


class PooledInput(nn.Module):
    """``body`` applied to the input average-pooled by ``factor`` (``adapter.input_pool``)."""

    def __init__(self, body: nn.Module, factor: int) -> None:
        super().__init__()
        self.body = body
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(nn.functional.avg_pool2d(x, self.factor))


def zero_output_layer(adapter: nn.Module) -> nn.Module:
    """Set the adapter's output layer (its last Linear: weight and bias) to exactly zero, in place."""
    linears = [m for m in adapter.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(adapter).__name__} has no Linear output layer to zero")
    with torch.no_grad():
        linears[-1].weight.zero_()
        if linears[-1].bias is not None:
            linears[-1].bias.zero_()
    return adapter


class HeadLoRA(nn.Module):
    """delta(h) = h A^T B^T with A: rank x dim, B: classes x rank (B zero-initialised)."""

    def __init__(self, representation_dim: int, num_classes: int, rank: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, representation_dim))
        self.lora_B = nn.Parameter(torch.zeros(num_classes, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        return (representation @ self.lora_A.t()) @ self.lora_B.t()


def build_adapter(
    *,
    reference: str,
    construction: str,
    placement: str,
    rank: int,
    in_channels: int,
    num_classes: int,
    image_size: int = 32,
    text: object | None = None,
    zero_init: bool = False,
    input_pool: int = 1,
) -> nn.Module:
    """Build the adapter; the same arguments give the same architecture on every client.

    On text (``text`` is the dataset's TextSpec) the ``branch`` adapter is a one-layer transformer
    of width ``rank`` (see :func:`pfedlora.models.text.branch_adapter_spec`); ``lora`` placement is
    built by :func:`inject_lora` instead. ``zero_init`` and ``input_pool`` apply to ``branch``
    (the head delta starts at zero anyway).
    """
    if placement == "head":
        if input_pool != 1:
            raise UserError("adapter.input_pool applies to placement branch, not head")
        representation_dim = getattr(build_model(reference, in_channels, num_classes, image_size, text=text), "representation_dim")
        return HeadLoRA(representation_dim, num_classes, rank)
    if placement != "branch":
        raise ValueError(f"unknown adapter placement {placement!r}; valid: branch, head")
    if text is not None:
        if construction != "reduced":
            raise UserError(f"adapter.construction {construction!r} is for CNN pools; on text the branch adapter is 'reduced'")
        if input_pool != 1:
            raise UserError("adapter.input_pool pools images; on text it must be 1")
        from pfedlora.models.text import TextClassifier, branch_adapter_spec

        adapter = TextClassifier(branch_adapter_spec(rank), text, num_classes, representation_dim=rank)  # type: ignore[arg-type]
        return zero_output_layer(adapter) if zero_init else adapter
    if image_size % input_pool:
        raise UserError(f"adapter.input_pool {input_pool} does not divide the image size {image_size}")
    try:
        adapter = _image_branch_adapter(reference, construction, rank, in_channels, num_classes, image_size // input_pool)
    except ValueError as error:
        if input_pool == 1:
            raise
        side = image_size // input_pool
        raise UserError(f"adapter.input_pool {input_pool}: the {construction} adapter of {reference} cannot be built "
                        f"for {side}x{side} inputs ({error})") from None
    if zero_init:
        zero_output_layer(adapter)
    # no wrapper at input_pool 1: the adapter's tensor names stay what they always were
    return PooledInput(adapter, input_pool) if input_pool != 1 else adapter


def _image_branch_adapter(reference: str, construction: str, rank: int, in_channels: int, num_classes: int,
                          image_size: int) -> nn.Module:
    if construction == "reduced":
        # the reduced adapter is the CNN layout cut to rank whichever CNN it is derived from; an HtFLlib
        # family's image member (pfedlora.models.families) gets the same one, the construction being defined
        # on that layout, so pFedLoRA runs on every image family
        if reference not in CNN_SPECS and member_kind(reference) != "image":
            raise ValueError(f"construction 'reduced' needs a CNN reference ({', '.join(CNN_SPECS)}) or an HtFLlib "
                             f"image family member, got {reference!r}")
        return CNN(CNNSpec(conv1=rank, conv2=rank, fc1=rank, fc2=rank), in_channels, num_classes, image_size)
    if construction == "factorized":
        return factorize(build_model(reference, in_channels, num_classes, image_size), rank)
    raise ValueError(f"unknown adapter construction {construction!r}; valid: reduced, factorized")


def factor_pairs(adapter: nn.Module) -> list[tuple[str, str]]:
    """``(B name, A name)`` of every low-rank product B.A in ``adapter``'s state dict: HeadLoRA's
    lora_B/lora_A and the second/first factor of each LowRankLinear / LowRankConv2d. A conv pair's
    product is taken with A reshaped to ``rank x (in k k)`` and B to ``out x rank``."""
    pairs = []
    for name, module in adapter.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, HeadLoRA):
            pairs.append((f"{prefix}lora_B", f"{prefix}lora_A"))
        elif isinstance(module, (LowRankLinear, LowRankConv2d)):
            pairs.append((f"{prefix}1.weight", f"{prefix}0.weight"))
    return pairs


class PersonalizedModel(nn.Module):
    """A client's personalized model: its local model F_k combined with the adapter.

    ``combine`` (branch placement): ``convex`` (1 - mu) F_k(x) + mu A(x) or ``additive``
    F_k(x) + mu A(x). Head placement is additive: head(h) + mu B A h.
    """

    def __init__(self, local_model: nn.Module, adapter: nn.Module, mu: float, placement: str,
                 combine: str = "convex") -> None:
        super().__init__()
        if combine not in ("convex", "additive"):
            raise ValueError(f"unknown combine {combine!r}; valid: convex, additive")
        self.local_model = local_model
        self.adapter = adapter
        self.mu = mu
        self.placement = placement
        self.combine = combine

    def mix(self, local_out: torch.Tensor, adapter_out: torch.Tensor) -> torch.Tensor:
        """The prediction from the two parts' outputs (the one rule, also for precomputed outputs)."""
        if self.placement == "head" or self.combine == "additive":
            return local_out + self.mu * adapter_out
        return (1.0 - self.mu) * local_out + self.mu * adapter_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "head":
            representation = self.local_model.represent(x)
            return self.mix(self.local_model.head(representation), self.adapter(representation))
        return self.mix(self.local_model(x), self.adapter(x))


# --------------------------------------------------------------------------- text: LoRA with HF PEFT

LORA_TARGETS = ("query", "value")


def lora_depth(archs: list[str]) -> int:
    """K = the fewest encoder layers among ``archs`` (all pretrained MiniLM encoders): LoRA goes on the
    query/value projections of layers 0..K-1, which every client has, so the adapter is homogeneous."""
    from pfedlora.models.text import TEXT_MODEL_SPECS

    pretrained = sorted(name for name, spec in TEXT_MODEL_SPECS.items() if spec.pretrained)
    wrong = [a for a in archs if a not in pretrained]
    if wrong:
        raise UserError(f"adapter.placement lora needs pretrained text encoders in the pool ({', '.join(pretrained)}), got {wrong[0]!r}")
    return min(TEXT_MODEL_SPECS[a].num_layers for a in archs)


def inject_lora(model: nn.Module, rank: int, num_layers: int) -> nn.Module:
    """Add PEFT LoRA (rank ``rank``, scaling alpha/r = 1, no dropout) to the query/value projections of
    the first ``num_layers`` encoder layers of a text model, in place; B starts at zero."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = "|".join(str(i) for i in range(num_layers))
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none",
                        target_modules=rf"encoder\.encoder\.layer\.({layers})\.attention\.self\.({'|'.join(LORA_TARGETS)})")
    model = inject_adapter_in_model(config, model)
    for p in model.parameters():  # PEFT freezes the rest; the training loop decides what trains
        p.requires_grad_(True)
    return model


def is_lora_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_factor_pairs(names: list[str]) -> list[tuple[str, str]]:
    """``(B name, A name)`` of the PEFT LoRA weights among state-dict ``names`` (lora_B.*.weight is
    out x rank, lora_A.*.weight rank x in)."""
    present = set(names)
    return [(name.replace(".lora_A.", ".lora_B."), name) for name in sorted(present)
            if ".lora_A." in name and name.endswith(".weight") and name.replace(".lora_A.", ".lora_B.") in present]
