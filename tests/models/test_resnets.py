"""ResNet-4/6/8/10 (HtFLlib) and ResNet-18/34/50/101/152 (torchvision's shapes) as family members."""

import pytest
from family_checks import check_member, conv, image_batch, linear, norm

STEM = conv(3, 64, 7) + norm(64)
WIDTHS = (64, 128, 256, 512)


def basic_stage(cin: int, planes: int, blocks: int, stride: int) -> tuple[int, int]:
    total = 0
    for i in range(blocks):
        s = stride if i == 0 else 1
        total += conv(cin, planes, 3) + norm(planes) + conv(planes, planes, 3) + norm(planes)
        if s != 1 or cin != planes:
            total += conv(cin, planes, 1) + norm(planes)
        cin = planes
    return total, cin


def bottleneck_stage(cin: int, planes: int, blocks: int, stride: int) -> tuple[int, int]:
    total = 0
    for i in range(blocks):
        s = stride if i == 0 else 1
        total += (conv(cin, planes, 1) + norm(planes) + conv(planes, planes, 3) + norm(planes)
                  + conv(planes, 4 * planes, 1) + norm(4 * planes))
        if s != 1 or cin != 4 * planes:
            total += conv(cin, 4 * planes, 1) + norm(4 * planes)
        cin = 4 * planes
    return total, cin


def extractor(blocks: list[int], bottleneck: bool) -> tuple[int, int]:
    """Parameters of stem + stages, and the pooled feature width (the reference's fc input)."""
    total, cin = STEM, 64
    for index, count in enumerate(blocks):
        stage = bottleneck_stage if bottleneck else basic_stage
        n, cin = stage(cin, WIDTHS[index], count, 1 if index == 0 else 2)
        total += n
    return total, cin


LAYOUTS = {  # name -> (blocks per stage, bottleneck), from torchvision / HtFLlib's resnet.py
    "resnet4": ([1], False), "resnet6": ([1, 1], False), "resnet8": ([1, 1, 1], False),
    "resnet10": ([1, 1, 1, 1], False), "resnet18": ([2, 2, 2, 2], False), "resnet34": ([3, 4, 6, 3], False),
    "resnet50": ([3, 4, 6, 3], True), "resnet101": ([3, 4, 23, 3], True), "resnet152": ([3, 8, 36, 3], True),
}
# torchvision's published totals (num_classes=1000): the formula above must reproduce them
TORCHVISION_TOTALS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}
BIG = {"resnet101", "resnet152"}


@pytest.mark.parametrize("name", sorted(TORCHVISION_TOTALS))
def test_formula_reproduces_torchvision_totals(name):
    blocks, bottleneck = LAYOUTS[name]
    body, width = extractor(blocks, bottleneck)
    assert body + linear(width, 1000) == TORCHVISION_TOTALS[name]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in LAYOUTS])
def test_member(name):
    blocks, bottleneck = LAYOUTS[name]
    body, _ = extractor(blocks, bottleneck)
    # HtFLlib's split: fc replaced by a parameter-free pool to 512, head Linear(512, classes)
    check_member(f"htfl_{name}", image_batch(), 10, body + linear(512, 10))


def test_width_and_heterogeneous_head_suffixes():
    body, _ = extractor(*LAYOUTS["resnet18"])
    check_member("htfl_resnet18_f256_head128", image_batch(), 10, body + linear(256, 128) + linear(128, 10),
                 feature_dim=256)
