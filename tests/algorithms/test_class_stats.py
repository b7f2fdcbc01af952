"""Per-class means and their federation-wide averages (FD, FedProto, FedGH)."""

import torch

from pfedlora.algorithms.base import Upload
from pfedlora.algorithms.class_stats import average_class_means, class_means


def test_class_means_match_a_direct_computation_and_count_absent_classes_as_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(23, 4, generator=g)
    y = torch.tensor([0, 2, 2, 3] * 5 + [0, 0, 3])
    means, counts = class_means(lambda v: v * 2, x, y, num_classes=5, batch_size=7)
    assert counts.tolist() == [7, 0, 10, 6, 0]
    for c in (0, 2, 3):
        assert torch.allclose(means[c], (x[y == c] * 2).mean(0), atol=1e-6)
    assert torch.equal(means[1], torch.zeros(4)) and torch.equal(means[4], torch.zeros(4))


def _upload(means, counts):
    return Upload(0, {"m": torch.tensor(means, dtype=torch.float32), "n": torch.tensor(counts, dtype=torch.float32)}, 1.0)


def test_average_weights_by_samples_or_by_clients_and_ignores_clients_lacking_a_class():
    uploads = [
        _upload([[1.0, 1.0], [0.0, 0.0], [4.0, 0.0]], [3, 0, 1]),
        _upload([[3.0, 5.0], [2.0, 2.0], [0.0, 0.0]], [1, 2, 0]),
    ]
    by_samples, counts = average_class_means(uploads, "m", "n", by_samples=True)
    assert torch.allclose(by_samples, torch.tensor([[1.5, 2.0], [2.0, 2.0], [4.0, 0.0]]))
    assert counts.tolist() == [4, 2, 1]
    by_clients, _ = average_class_means(uploads, "m", "n", by_samples=False)
    # class 0: both clients count once; classes 1 and 2: only the client that holds them
    assert torch.allclose(by_clients, torch.tensor([[2.0, 3.0], [2.0, 2.0], [4.0, 0.0]]))


def test_a_class_no_upload_holds_keeps_its_previous_value_or_is_absent():
    uploads = [_upload([[1.0], [0.0]], [2, 0])]
    fresh, fresh_counts = average_class_means(uploads, "m", "n", by_samples=True)
    assert fresh.tolist() == [[1.0], [0.0]] and fresh_counts.tolist() == [2, 0]
    previous = (torch.tensor([[9.0], [7.0]]), torch.tensor([5.0, 3.0]))
    kept, kept_counts = average_class_means(uploads, "m", "n", by_samples=True, previous=previous)
    assert kept.tolist() == [[1.0], [7.0]] and kept_counts.tolist() == [2, 3]
