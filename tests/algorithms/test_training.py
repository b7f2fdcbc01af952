"""The shared training loop: the optimizer choice and the learning-rate warm-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pfedlora.algorithms.training import make_optimizer, train_epochs
from pfedlora.config import TrainConfig


def _linear_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # d loss / d weight = 1 for every weight, whatever the data: each SGD step moves a weight by -lr
    return module(x).sum() / x.shape[0] - module.bias.sum() + 0 * y.sum()


def _steps(train: TrainConfig, steps: int) -> list[float]:
    """The weight after each of ``steps`` one-sample steps of a 1x1 linear model (starting at 0)."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x, y = torch.ones(steps, 1), torch.zeros(steps, dtype=torch.long)
    weights: list[float] = []
    generator = torch.Generator().manual_seed(0)
    original_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        weights.append(float(model.weight.detach()))
        return result

    torch.optim.SGD.step = recording_step
    try:
        train_epochs(model, [model.weight], x, y, epochs=1, train=train, generator=generator, loss_fn=_linear_loss)
    finally:
        torch.optim.SGD.step = original_step
    return weights


def test_warmup_ramps_the_learning_rate_linearly_then_holds_it():
    plain = TrainConfig(lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=1)
    assert _steps(plain, 4) == pytest.approx([-1.0, -2.0, -3.0, -4.0])
    warm = plain.model_copy(update={"warmup_steps": 3})
    # steps 1..3 at lr x 1/4, 2/4, 3/4, then the full lr
    assert _steps(warm, 5) == pytest.approx([-0.25, -0.75, -1.5, -2.5, -3.5])


def test_optimizer_choice_is_used():
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(params, TrainConfig()), torch.optim.SGD)
    adamw = make_optimizer(params, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["lr"] == 1e-3 and adamw.param_groups[0]["weight_decay"] == 0.01


def test_adamw_and_sgd_train_differently():
    def trained(train: TrainConfig) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        train_epochs(model, model.parameters(), x, y, epochs=2, train=train, generator=torch.Generator().manual_seed(1))
        return model.weight.detach().clone()

    sgd = trained(TrainConfig(lr=0.01, batch_size=8))
    adamw = trained(TrainConfig(lr=0.01, batch_size=8, optimizer="adamw"))
    assert not torch.allclose(sgd, adamw)
    # Adam moves every weight by about lr per step whatever the gradient's scale
    start = trained(TrainConfig(lr=1e-9, batch_size=8, optimizer="adamw"))
    assert float((adamw - start).abs().max()) == pytest.approx(8 * 0.01, rel=0.35)
