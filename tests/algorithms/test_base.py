"""derive_seed: a function of all of its parts, whole strings included."""

from pfedlora.algorithms.base import derive_seed


def test_string_tags_that_share_a_prefix_give_different_seeds():
    # until 2026-11-30 only a string's first 4 bytes counted, so these pairs collided
    assert derive_seed(0, "global_header") != derive_seed(0, "global_model")
    assert derive_seed(0, "train", 1, 2) != derive_seed(0, "trained", 1, 2)


def test_seeds_are_deterministic_and_depend_on_every_part():
    assert derive_seed(3, "client", 7) == derive_seed(3, "client", 7)
    seeds = {derive_seed(s, tag, k) for s in (0, 1) for tag in ("client", "train") for k in (0, 1, 2)}
    assert len(seeds) == 12
    assert 0 <= derive_seed(0, "x") < 2**63
    assert derive_seed(0, "ab") != derive_seed(0, "a", "b")
