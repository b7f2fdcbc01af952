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


def make_optimizer(parameters: list[nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``parameters`` at ``train.lr`` (momentum and weight decay from ``train``)."""
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, betas=(0.9, 0.999), weight_decay=train.weight_decay)
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
) -> TrainStats:
    """Train ``trainable`` (parameters of ``module`` or of modules ``loss_fn`` uses) with SGD.

    Mini-batches are drawn by a permutation from ``generator`` each epoch; the last batch may be
    smaller. ``x`` may be a tuple of tensors sharing their first dimension: each mini-batch is the
    same rows of every tensor (augmentation then does not apply). The optimizer is ``train.optimizer``
    (momentum SGD or AdamW) with ``train.lr`` warmed up linearly over ``train.warmup_steps`` steps;
    gradients are clipped to ``train.clip_norm``. A fresh optimizer per call: no optimizer state
    persists across rounds, as in the authors' code.
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
        for _ in range(epochs):
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
