import numpy as np
import pytest

from pfedlora.data.noise import corrupt_labels


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_noise_rate_and_flipped_labels_differ(kind):
    labels = np.random.default_rng(0).integers(0, 10, size=20000)
    noisy, flipped = corrupt_labels(labels, 10, 0.4, kind, np.random.default_rng(1))
    assert abs(flipped.mean() - 0.4) < 0.02
    assert np.all(noisy[flipped] != labels[flipped]) and np.all(noisy[~flipped] == labels[~flipped])
    if kind == "pair":
        assert np.all(noisy[flipped] == (labels[flipped] + 1) % 10)
    else:  # symmetric: every other class is hit about equally often
        hits = np.bincount((noisy[flipped] - labels[flipped]) % 10, minlength=10)[1:]
        assert hits.min() > 0.8 * hits.mean()


def test_zero_rate_is_identity_and_deterministic():
    labels = np.arange(100) % 7
    noisy, flipped = corrupt_labels(labels, 7, 0.0, "symmetric", np.random.default_rng(0))
    assert np.array_equal(noisy, labels) and not flipped.any()
    a, _ = corrupt_labels(labels, 7, 0.3, "symmetric", np.random.default_rng(5))
    b, _ = corrupt_labels(labels, 7, 0.3, "symmetric", np.random.default_rng(5))
    assert np.array_equal(a, b)
