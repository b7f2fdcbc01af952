"""Label noise on clients' training labels (open question 5: robustness).

``symmetric``: a corrupted label becomes one of the *other* classes uniformly at random.
``pair``: a corrupted label becomes the next class, (y + 1) mod C (pair-flip noise).
Only training labels are corrupted; test labels stay clean so accuracy measures the true task.
"""

from __future__ import annotations

import numpy as np

NOISE_KINDS = ("symmetric", "pair")


def corrupt_labels(labels: np.ndarray, num_classes: int, rate: float, kind: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy labels, mask of corrupted positions); each label flips with probability ``rate``."""
    labels = np.asarray(labels, dtype=np.int64)
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown label noise kind {kind!r}; valid: {', '.join(NOISE_KINDS)}")
    flip = rng.random(labels.shape[0]) < rate
    noisy = labels.copy()
    if kind == "pair":
        noisy[flip] = (labels[flip] + 1) % num_classes
    else:
        # an offset in 1..C-1 never maps a label onto itself
        offsets = rng.integers(1, num_classes, size=int(flip.sum()))
        noisy[flip] = (labels[flip] + offsets) % num_classes
    return noisy, flip
