"""The shared training loop: the optimizer choice and the learning-rate warm-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pfedlora.algorithms.training import PlainSGD, make_optimizer, train_epochs
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
    original_step = PlainSGD.step

    def recording_step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        weights.append(float(model.weight.detach()))
        return result

    PlainSGD.step = recording_step
    try:
        train_epochs(model, [model.weight], x, y, epochs=1, train=train, generator=generator, loss_fn=_linear_loss)
    finally:
        PlainSGD.step = original_step
    return weights


def test_warmup_ramps_the_learning_rate_linearly_then_holds_it():
    plain = TrainConfig(lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=1)
    assert _steps(plain, 4) == pytest.approx([-1.0, -2.0, -3.0, -4.0])
    warm = plain.model_copy(update={"warmup_steps": 3})
    # steps 1..3 at lr x 1/4, 2/4, 3/4, then the full lr
    assert _steps(warm, 5) == pytest.approx([-0.25, -0.75, -1.5, -2.5, -3.5])


def test_optimizer_choice_is_used():
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(params, TrainConfig()), PlainSGD)  # CPU parameters
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


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-3), (0.9, 1e-3)])
def test_plain_sgd_is_torch_sgd_bit_for_bit(momentum: float, weight_decay: float):
    """PlainSGD replaces torch.optim.SGD on CPU (no torch._dynamo import, less per-step dispatch):
    the same weights after several steps with a changing lr (warm-up) and a parameter without a
    gradient (skipped by both)."""
    def run(make) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        unused = nn.Parameter(torch.randn(4))
        params = [*model.parameters(), unused]
        optimizer = make(params)
        generator = torch.Generator().manual_seed(3)
        for step in range(7):
            optimizer.param_groups[0]["lr"] = 0.05 * (step + 1) / 7
            x, y = torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return [p.detach().clone() for p in params]

    ours = run(lambda params: PlainSGD(params, 0.05, momentum, weight_decay))
    torch_sgd = run(lambda params: torch.optim.SGD(params, lr=0.05, momentum=momentum, weight_decay=weight_decay))
    assert all(torch.equal(a, b) for a, b in zip(ours, torch_sgd))
