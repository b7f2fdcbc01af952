"""Batched random crop (padding 4) + horizontal flip: shapes, determinism, what each image becomes."""

import pytest
import torch
import torch.nn.functional as F

from pfedlora.config import build_config
from pfedlora.data.augment import random_crop_flip
from pfedlora.errors import UserError


def _images(n=16, channels=3, side=32):
    return torch.randn(n, channels, side, side, generator=torch.Generator().manual_seed(1))


def test_shape_dtype_kept_and_same_generator_seed_gives_the_same_batch():
    x = _images()
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_every_image_is_a_padded_crop_possibly_flipped_and_both_kinds_occur():
    x = _images(n=32, side=12)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(x.shape[0]):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 12, dx:dx + 12]))]
        assert matches, f"image {i} is not a crop of the padded input"
        flipped += all(flip for _, _, flip in matches)
    assert 0 < flipped < x.shape[0]


def test_text_datasets_refuse_augmentation():
    with pytest.raises(UserError, match="dataset.augment"):
        build_config({"dataset": {"name": "trec", "augment": True}, "model_pool": ["tf_d64_l2"]})
