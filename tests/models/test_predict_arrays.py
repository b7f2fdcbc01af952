"""``predict`` takes a list of uint8 arrays as it takes a stacked array (it once tried to open each
array as a file: "corrupt or unreadable image")."""

import numpy as np
import torch

from pfedlora.data.images import preprocess_images

RGB = {"channels": 3, "image_size": 32, "fit": "resize", "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}
GRAY = {"channels": 1, "image_size": 32, "fit": "resize", "mean": [33.0], "std": [70.0]}


def test_a_list_of_hwc_arrays_is_the_stacked_array():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    stacked = preprocess_images(batch, RGB)
    listed = preprocess_images(list(batch), RGB)
    assert listed.shape == (4, 3, 32, 32)
    torch.testing.assert_close(listed, stacked, rtol=0, atol=0)


def test_list_items_in_chw_grayscale_and_mixed_with_other_sources():
    from PIL import Image

    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    chw = hwc.transpose(2, 0, 1).copy()  # one image channels-first, not three grayscale images
    out = preprocess_images([hwc, chw, Image.fromarray(hwc)], RGB)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)
    gray = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    assert preprocess_images([gray, torch.from_numpy(gray)], GRAY).shape == (2, 1, 32, 32)
