"""Measured FLOPs equal the analytic counts of Linear and Conv2d layers."""

import torch
from torch import nn

from pfedlora.algorithms.aggregation import weighted_mean
from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.training import train_epochs
from pfedlora.config import TrainConfig
from pfedlora.metrics.flops import count_server_flops, evaluation_flops, forward_flops

TRAIN = TrainConfig(batch_size=4, lr=0.01)


def _sum_loss(module, x, y):
    # no counted FLOPs of its own, so the totals are the layers' alone
    return module(x).sum()


def test_linear_and_conv_forward_flops_are_analytic():
    linear = nn.Linear(8, 4)
    assert forward_flops(linear, torch.randn(3, 8)) == 2 * 3 * 8 * 4
    conv = nn.Conv2d(3, 6, kernel_size=5)  # 12x12 -> 8x8
    assert forward_flops(conv, torch.randn(2, 3, 12, 12)) == 2 * 2 * 6 * 8 * 8 * 3 * 5 * 5
    # evaluation in batches of 4 over 10 samples: 4 + 4 + 2
    assert evaluation_flops(linear, torch.randn(10, 8), 4) == 2 * 10 * 8 * 4


def test_training_flops_count_forward_and_backward_and_respect_freezing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(10, 8), torch.zeros(10, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    both = train_epochs(model, model.parameters(), x, y, epochs=2, train=TRAIN, generator=gen, loss_fn=_sum_loss)
    # per sample: forward 2*(48+18); backward: weight grads 2*(48+18), input grad of layer 2 only 2*18
    assert both.flops == 2 * 10 * (2 * 66 + 2 * 66 + 2 * 18)
    frozen = train_epochs(model, model[2].parameters(), x, y, epochs=1, train=TRAIN, generator=gen, loss_fn=_sum_loss)
    # layer 1 frozen: no weight grad for it and no gradient flows into it
    assert frozen.flops == 10 * (2 * 66 + 2 * 18)
    assert frozen.num_steps == 3 and both.num_steps == 6


def test_conv_training_flops():
    conv = nn.Conv2d(1, 2, kernel_size=3)  # 6x6 -> 4x4
    x, y = torch.randn(5, 1, 6, 6), torch.zeros(5, dtype=torch.long)
    stats = train_epochs(conv, conv.parameters(), x, y, epochs=1, train=TRAIN,
                         generator=torch.Generator().manual_seed(0), loss_fn=_sum_loss)
    forward = 2 * 2 * 4 * 4 * 1 * 3 * 3  # per sample
    assert stats.flops == 5 * 2 * forward  # forward + weight gradient (the input needs none)


def test_server_flops_count_elementwise_aggregation_and_svd():
    n = 100
    uploads = [Upload(k, {"w": torch.randn(n)}, weight=float(k + 1)) for k in range(3)]
    _, flops = count_server_flops(weighted_mean, uploads)
    # 3 scalings, 2 accumulations, 1 division, one FLOP per element each
    assert flops == 6 * n
    _, svd_flops = count_server_flops(torch.linalg.svd, torch.randn(10, 4), full_matrices=False)
    assert svd_flops == 4 * 10 * 4 * 4 + 22 * 4**3
