"""An exact, fast 2 x 2 max pool (stride 2) for the CNN pools.

Why: on CPU, torch's ``max_pool2d`` on contiguous NCHW tensors runs a scalar loop; on this project's
AVX-512 machine it takes 4.1 ms for a 64 x 16 x 28 x 28 batch, against 0.41 ms for three elementwise
``torch.maximum`` over strided window views (``benchmarks/README.md``), and pools were 16% of a
CNN-1 training step. The result is bit-for-bit torch's: the forward is the same maximum, and the backward
sends each output's gradient to the first maximal element of its window in scan order (row-major),
the element torch's kernel records as its index. Windows do not overlap, so no gradients are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pad_to_even(x: torch.Tensor, ceil_mode: bool) -> torch.Tensor:
    height, width = x.shape[-2:]
    if ceil_mode:
        # a partial last window: pad with -inf, which is never the maximum of a window holding a number
        pad_h, pad_w = height % 2, width % 2
        return F.pad(x, (0, pad_w, 0, pad_h), value=float("-inf")) if pad_h or pad_w else x
    return x[..., : height - height % 2, : width - width % 2]


def _windows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four elements of every 2 x 2 window, in scan order (top-left, top-right, bottom-left, bottom-right)."""
    n, c, h, w = x.shape
    v = x.view(n, c, h // 2, 2, w // 2, 2)
    return v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1], v[:, :, :, 1, :, 0], v[:, :, :, 1, :, 1]


def _window_max(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = _windows(x)
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = _window_max(x)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, out = ctx.saved_tensors
        a, b, c, _ = _windows(x)
        # the first maximal element in scan order takes the gradient (torch's tie rule)
        take_a = a == out
        taken = take_a.clone()
        take_b = (b == out).logical_and_(taken.logical_not())
        taken.logical_or_(take_b)
        take_c = (c == out).logical_and_(taken.logical_not())
        taken.logical_or_(take_c)
        take_d = taken.logical_not_()
        if torch.is_grad_enabled():
            # a differentiable backward (create_graph=True, e.g. FedL2G's meta-gradient through one
            # SGD step): the same values, assembled without out= (which autograd cannot trace)
            parts = [grad_out * take for take in (take_a, take_b, take_c, take_d)]
            n, ch, h2, w2 = grad_out.shape
            return (torch.stack(parts, dim=-1).view(n, ch, h2, w2, 2, 2).permute(0, 1, 2, 4, 3, 5)
                    .reshape(x.shape))
        # bool masks times the gradient, written straight into the strided window views of grad_in
        # (torch.where is ~3x slower here)
        grad_in = torch.empty_like(x, memory_format=torch.contiguous_format)
        for view, take in zip(_windows(grad_in), (take_a, take_b, take_c, take_d)):
            torch.mul(grad_out, take, out=view)
        return grad_in


def max_pool_2x2(x: torch.Tensor, ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d(x, 2, ceil_mode=ceil_mode)``, bit for bit; the fast path is for CPU tensors."""
    if x.dim() != 4 or not x.is_floating_point() or x.device.type != "cpu":
        # the scalar-loop problem is torch's CPU kernel; elsewhere (CUDA) torch's pool is the fast one
        return F.max_pool2d(x, 2, ceil_mode=ceil_mode)
    x = _pad_to_even(x, ceil_mode).contiguous()
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        return F.max_pool2d(x, 2)
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _window_max(x)
    return _MaxPool2x2.apply(x)


class MaxPool2x2(nn.Module):
    """Drop-in for ``nn.MaxPool2d(2, ceil_mode=...)`` (kernel 2, stride 2, no padding); see the module docstring."""

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__()
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x, self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size=2, stride=2, ceil_mode={self.ceil_mode}"
