"""A partial last batch's step FLOPs are derived from two counted batch sizes, and equal a count."""

import torch

from pfedlora.algorithms.training import train_epochs
from pfedlora.config import TrainConfig
from pfedlora.metrics import flops as flop_count
from pfedlora.models.registry import build_model


def _flops(n: int, batch_size: int) -> int:
    torch.manual_seed(0)
    model = build_model("cnn5", 1, 10, 16)
    x, y = torch.randn(n, 1, 16, 16), torch.randint(0, 10, (n,))
    return train_epochs(model, model.parameters(), x, y, epochs=1, train=TrainConfig(batch_size=batch_size),
                        generator=torch.Generator().manual_seed(0)).flops


def test_derived_partial_batch_flops_equal_counted_ones():
    flop_count.clear_caches()
    _flops(24, 16)  # counts batch sizes 16 and 8
    derived = _flops(21, 16)  # 16 + 5: the 5 is derived
    assert not any(key[1][1] == (5,) for key in flop_count._STEP_CACHE)  # derived, never counted
    flop_count.clear_caches()
    counted_single = _flops(5, 16)  # counts 5 directly
    flop_count.clear_caches()
    assert derived == _flops(16, 16) + counted_single
