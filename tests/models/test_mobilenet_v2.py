"""MobileNetV2 (HtFLlib's mobilenet_v2.py = torchvision's shapes) as a family member."""

from family_checks import check_member, conv, image_batch, linear, norm

SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(cin: int, cout: int, kernel: int, groups: int = 1) -> int:
    return conv(cin // groups, cout, kernel) + norm(cout)


def body() -> int:
    total, cin = conv_bn(3, 32, 3), 32
    for t, c, n, _ in SETTING:
        for _ in range(n):
            hidden = cin * t
            if t != 1:
                total += conv_bn(cin, hidden, 1)
            total += conv_bn(hidden, hidden, 3, groups=hidden) + conv_bn(hidden, c, 1)
            cin = c
    return total + conv_bn(cin, 1280, 1)


def test_formula_reproduces_torchvision_total():
    assert body() + linear(1280, 1000) == 3_504_872  # torchvision mobilenet_v2()


def test_member():
    check_member("htfl_mobilenet_v2", image_batch(), 10, body() + linear(512, 10))
