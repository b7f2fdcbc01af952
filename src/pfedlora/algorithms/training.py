"""The one training loop every algorithm uses.

Algorithms differ in *what* they train and *which loss* they minimise, not in the loop: the
trainable parameters and an optional loss function are arguments. Parameters of ``module`` that
are not in ``trainable`` are frozen for the call (no gradient, no weight decay), so they come out
bit-for-bit unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pfedlora.algorithms.base import TrainStats
from pfedlora.config import TrainConfig
from pfedlora.metrics import flops as flop_count

# ``x`` is a tensor or a tuple of tensors indexed together (e.g. inputs plus the precomputed
# outputs of a frozen part); ``loss_fn`` receives the mini-batch in the same form
Inputs = torch.Tensor | tuple[torch.Tensor, ...]
LossFn = Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def cross_entropy_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(module(x), y)


class PlainSGD:
    """``torch.optim.SGD`` on CPU tensors, the same operations in the same order (its single-tensor
    path, which torch takes for CPU parameters), so the weights come out bit for bit the same.

    Why: the first ``torch.optim.Optimizer`` a process builds imports ``torch._dynamo`` (1.5-3 s of
    CPU on this project's machine), which made the first round of every run (and every forked worker
    that had not inherited the import) that much slower; its per-step dispatch (hooks, profiler
    records) is also not free at 8 steps per client. Momentum buffers start empty, as a fresh
    ``torch.optim.SGD`` has them; no state outlives a ``train_epochs`` call.
    """

    def __init__(self, parameters: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> None:
        self.param_groups = [{"params": list(parameters), "lr": lr}]  # "lr" is read at every step (warm-up)
        self.momentum, self.weight_decay = momentum, weight_decay
        self._buffers: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        for i, param in enumerate(self.param_groups[0]["params"]):
            if param.grad is None:  # torch skips parameters without a gradient
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self._buffers.get(i)
                if buf is None:
                    buf = self._buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = buf
            param.add_(grad, alpha=-lr)


def make_optimizer(parameters: list[nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer | PlainSGD:
    """``train.optimizer`` over ``parameters`` at ``train.lr`` (momentum and weight decay from ``train``)."""
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, betas=(0.9, 0.999), weight_decay=train.weight_decay)
    if all(p.device.type == "cpu" for p in parameters):
        return PlainSGD(parameters, train.lr, train.momentum, train.weight_decay)
    # elsewhere torch's multi-tensor (foreach) path, which rounds differently from the loop above
    return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def train_epochs(
    module: nn.Module,
    trainable: Iterable[nn.Parameter],
    x: Inputs,
    y: torch.Tensor,
    *,
    epochs: int,
    train: TrainConfig,
    generator: torch.Generator,
    loss_fn: LossFn = cross_entropy_loss,
    augment: Augment | None = None,
    name: str = "",
    on_epoch: Callable[[int], None] | None = None,
) -> TrainStats:
    """Train ``trainable`` (parameters of ``module`` or of modules ``loss_fn`` uses) with SGD.

    Mini-batches are drawn by a permutation from ``generator`` each epoch; the last batch may be
    smaller. ``x`` may be a tuple of tensors sharing their first dimension: each mini-batch is the
    same rows of every tensor (augmentation then does not apply). The optimizer is ``train.optimizer``
    (momentum SGD or AdamW) with ``train.lr`` warmed up linearly over ``train.warmup_steps`` steps;
    gradients are clipped to ``train.clip_norm``. A fresh optimizer per call: no optimizer state
    persists across rounds, as in the authors' code. ``on_epoch(e)`` is called before epoch ``e``
    (0-based) starts, e.g. so a loss can record statistics during the last epoch only.
    """
    trainable = list(trainable)
    stats = TrainStats(module=name)
    n = int(y.shape[0])
    if epochs <= 0 or n == 0 or not trainable:
        return stats
    if isinstance(x, tuple) and augment is not None:
        raise ValueError("augmentation needs a single input tensor, not a tuple")
    first = x[0] if isinstance(x, tuple) else x
    trainable_ids = {id(p) for p in trainable}
    saved_flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in saved_flags:
        p.requires_grad_(id(p) in trainable_ids)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = make_optimizer(trainable, train)
    was_training = module.training
    module.train()
    loss_total = torch.zeros((), device=first.device)
    # train.precision bf16: mixed precision forward; parameters, gradients and the optimizer stay fp32
    autocast = torch.autocast(first.device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
    # FLOPs of one step per batch shape: counted on the first real step with that key, then cached
    static_key: tuple | None = None
    step_flops: dict[tuple, int | None] = {}
    try:
        for epoch in range(epochs):
            if on_epoch is not None:
                on_epoch(epoch)
            order = torch.randperm(n, generator=generator).to(first.device)
            for start in range(0, n, train.batch_size):
                index = order[start : start + train.batch_size]
                xb = tuple(t[index] for t in x) if isinstance(x, tuple) else x[index]
                yb = y[index]
                if augment is not None:
                    xb = augment(xb, generator)
                optimizer.zero_grad(set_to_none=True)
                shape = (tuple(tuple(t.shape) for t in xb) if isinstance(xb, tuple) else tuple(xb.shape),
                         tuple(yb.shape))
                if shape not in step_flops:
                    if static_key is None:
                        static_key = flop_count.step_key(module, trainable, loss_fn, first[:0], yb[:0])
                    step_flops[shape] = flop_count.cached_step_flops((static_key, shape))
                if step_flops[shape] is None:
                    with flop_count.counting() as counter:
                        with autocast:
                            loss = loss_fn(module, xb, yb)
                        loss.backward()
                    step_flops[shape] = int(counter.get_total_flops())
                    flop_count.store_step_flops((static_key, shape), step_flops[shape])
                else:
                    with autocast:
                        loss = loss_fn(module, xb, yb)
                    loss.backward()
                stats.flops += step_flops[shape]
                torch.nn.utils.clip_grad_norm_(trainable, train.clip_norm)
                if train.warmup_steps:  # linear warm-up: lr x k/(warmup + 1) at step k, then lr
                    for group in optimizer.param_groups:
                        group["lr"] = train.lr * min(1.0, (stats.num_steps + 1) / (train.warmup_steps + 1))
                optimizer.step()
                loss_total += loss.detach()
                stats.num_steps += 1
                stats.num_samples += int(index.shape[0])
                stats.batch_sizes[int(index.shape[0])] = stats.batch_sizes.get(int(index.shape[0]), 0) + 1
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        module.train(was_training)
    stats.loss_sum = float(loss_total)
    return stats
