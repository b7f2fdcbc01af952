"""GoogLeNet (torchvision's shapes, aux_logits=False) as a family member."""

from family_checks import check_member, conv, image_batch, linear, norm


def basic_conv(cin: int, cout: int, kernel: int) -> int:
    return conv(cin, cout, kernel) + norm(cout)


def inception(cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> int:
    # torchvision's "5x5" branch is a 3x3 conv
    return (basic_conv(cin, c1, 1) + basic_conv(cin, c3r, 1) + basic_conv(c3r, c3, 3) + basic_conv(cin, c5r, 1)
            + basic_conv(c5r, c5, 3) + basic_conv(cin, pool, 1))


TABLE = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), (480, 192, 96, 208, 16, 48, 64),
         (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
         (528, 256, 160, 320, 32, 128, 128), (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128)]
BODY = basic_conv(3, 64, 7) + basic_conv(64, 64, 1) + basic_conv(64, 192, 3) + sum(inception(*row) for row in TABLE)


def test_formula_reproduces_torchvision_total():
    assert BODY + linear(1024, 1000) == 6_624_904  # torchvision googlenet(aux_logits=False)


def test_member():
    check_member("htfl_googlenet", image_batch(), 10, BODY + linear(512, 10))
