"""Inference passes on CPU cut a batch of more than CPU_PASS_ROWS rows into near-equal parts: faster
(benchmarks/README.md), and the numbers of the configured batch."""

import pytest
import torch

from pfedlora.algorithms.class_stats import class_means
from pfedlora.metrics.accuracy import CPU_PASS_ROWS, accuracy, pass_slices
from pfedlora.models.registry import build_model


def _sizes(n, batch, device="cpu"):
    return [s.stop - s.start for s in pass_slices(n, batch, torch.zeros(1, device=device))]


def test_a_batch_above_the_cap_is_cut_into_near_equal_parts_on_cpu_only():
    assert _sizes(500, 1024) == [250, 250]
    assert _sizes(260, 1024) == [130, 130]  # not 256 + 4: a few rows alone take other kernels
    assert _sizes(1030, 1024) == [256, 256, 256, 256, 6]  # the configured batch's own rest stays as it was
    assert _sizes(200, 64) == [64, 64, 64, 8]  # batches within the cap: unchanged
    assert _sizes(500, 1024, "meta") == [500]
    assert all(CPU_PASS_ROWS // 2 <= size <= CPU_PASS_ROWS for n in range(257, 1025) for size in _sizes(n, 1024))


@pytest.mark.parametrize("arch", ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"])
def test_a_rows_output_does_not_depend_on_the_rows_beside_it(arch):
    """What lets a pass be cut: each CNN's logits and representations, bit for bit, from 37 rows a
    forward up (1-7 rows take other kernels: the cut never makes parts that small)."""
    torch.manual_seed(0)
    model = build_model(arch, 3, 10).eval()
    x = torch.randn(500, 3, 32, 32)
    with torch.inference_mode():
        for fn in (model, model.represent):
            whole = fn(x)
            for rows in (CPU_PASS_ROWS, 128, 64, 37):
                assert torch.equal(torch.cat([fn(x[i:i + rows]) for i in range(0, 500, rows)]), whole)


def test_accuracy_and_class_means_are_those_of_the_configured_batch():
    torch.manual_seed(1)
    model = build_model("cnn2", 3, 10)
    x, y = torch.randn(600, 3, 32, 32), torch.randint(0, 10, (600,))
    with torch.inference_mode():
        whole = model(x).argmax(1)
        reps = model.represent(x).double()
    assert accuracy(model, x, y, 1024) == 100.0 * int((whole == y).sum()) / 600
    means, counts = class_means(model.represent, x, y, 10, 1024)
    sums = torch.zeros(10, reps.shape[1], dtype=torch.float64).index_add_(0, y, reps)  # one forward, one sum
    assert torch.equal(counts, torch.bincount(y, minlength=10).float())
    assert torch.equal(means, (sums / counts.double().clamp(min=1).unsqueeze(1)).float())
