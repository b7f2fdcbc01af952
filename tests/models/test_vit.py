"""ViT-B/16 and ViT-B/32 at 32x32 (torchvision's shapes) as family members, with HtFLlib's ViT head."""

import pytest
from family_checks import check_member, image_batch, linear, norm

WIDTH, DEPTH, MLP = 768, 12, 3072


def body(patch: int, image_size: int) -> int:
    tokens = (image_size // patch) ** 2 + 1
    block = norm(WIDTH) + (3 * WIDTH * WIDTH + 3 * WIDTH) + linear(WIDTH, WIDTH) + norm(WIDTH) \
        + linear(WIDTH, MLP) + linear(MLP, WIDTH)
    return 3 * WIDTH * patch * patch + WIDTH + WIDTH + tokens * WIDTH + DEPTH * block + norm(WIDTH)


def test_formula_reproduces_torchvision_totals():
    assert body(16, 224) + linear(WIDTH, 1000) == 86_567_656  # torchvision vit_b_16()
    assert body(32, 224) + linear(WIDTH, 1000) == 88_224_232  # torchvision vit_b_32()


@pytest.mark.slow
@pytest.mark.parametrize("patch", [16, 32])
def test_member(patch):
    # HtFLlib's ViT head: Linear(512, 768) -> Tanh -> Linear(768, classes)
    check_member(f"htfl_vit_b{patch}", image_batch(), 10, body(patch, 32) + linear(512, WIDTH) + linear(WIDTH, 10))
