import torch

from pfedlora.algorithms.aggregation import WeightedMean, weighted_mean
from pfedlora.algorithms.base import Upload


def test_fedavg_weights_by_sample_count():
    uploads = [
        Upload(0, {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor(2.0)}, weight=1),
        Upload(1, {"w": torch.tensor([5.0, 4.0]), "b": torch.tensor(6.0)}, weight=3),
    ]
    mean = weighted_mean(uploads)
    torch.testing.assert_close(mean["w"], torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(mean["b"], torch.tensor(5.0))


def test_streaming_mean_ignores_zero_weight_and_keeps_dtype():
    mean = WeightedMean()
    mean.add({"w": torch.ones(3)}, 2.0)
    mean.add({"w": torch.full((3,), 100.0)}, 0.0)
    assert mean.total_weight == 2.0
    out = mean.result(like={"w": torch.zeros(3, dtype=torch.float64)})
    assert out["w"].dtype == torch.float64
    torch.testing.assert_close(out["w"], torch.ones(3, dtype=torch.float64))
