"""Shared checks of the HtFLlib family members (tests/models/test_<architecture>.py): forward and
backward at batch 2, the representation width, the parameter count, one pFedLoRA adapter attached.

Expected parameter counts are computed in each test from the reference definitions' published layer
shapes (and, where torchvision publishes one, checked against its total), never from the model code.
"""

from __future__ import annotations

import torch

from pfedlora.models.adapters import PersonalizedModel, build_adapter
from pfedlora.models.registry import build_model, parameter_count


def conv(cin: int, cout: int, kernel: int | tuple[int, int], bias: bool = False) -> int:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return cin * cout * kh * kw + (cout if bias else 0)


def linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def norm(channels: int) -> int:
    """BatchNorm / LayerNorm: a weight and a bias per channel."""
    return 2 * channels


def image_batch(channels: int = 3, side: int = 32) -> torch.Tensor:
    return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))


def check_member(name: str, x: torch.Tensor, num_classes: int, expected_parameters: int, *,
                 feature_dim: int = 512, text: object = None, placement: str = "branch") -> torch.nn.Module:
    """Build ``name`` for ``x``'s shape; every check of the family's contract on a batch of 2."""
    in_channels = 0 if text is not None else int(x.shape[1])
    image_size = 0 if text is not None else int(x.shape[-1])
    torch.manual_seed(0)
    model = build_model(name, in_channels, num_classes, image_size, text=text)
    assert parameter_count(model) == expected_parameters
    assert model.representation_dim == feature_dim
    model.train()
    representation = model.represent(x)
    assert representation.shape == (2, feature_dim)
    logits = model.head(representation)
    assert logits.shape == (2, num_classes)
    logits.square().mean().backward()
    trained = [p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(trained) >= len(list(model.head.parameters())) + 1  # the head and the extractor learn
    model.zero_grad()
    # one pFedLoRA adapter attached: the branch adapter (images) or the LoRA delta on the head
    adapter = build_adapter(reference=name, construction="reduced", placement=placement, rank=4,
                            in_channels=in_channels, num_classes=num_classes, image_size=image_size, text=text)
    personalized = PersonalizedModel(model, adapter, mu=0.5, placement=placement,
                                     combine="additive" if placement == "head" else "convex")
    out = personalized(x)
    assert out.shape == (2, num_classes)
    out.square().mean().backward()
    assert all(p.grad is not None for p in adapter.parameters())
    model.eval()
    with torch.no_grad():  # evaluation mode runs (BatchNorm on running statistics, no dropout)
        assert torch.isfinite(model(x)).all()
    return model
