"""Tests for pfedlora.data.partition."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedlora.data import ClientSplit, partition_clients, partition_counts
from pfedlora.errors import UserError


def labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


TRAIN10, TEST10 = labels(10, 500), labels(10, 100, seed=1)
TRAIN100, TEST100 = labels(100, 50), labels(100, 10, seed=1)


def _assert_disjoint(splits: list[ClientSplit]) -> np.ndarray:
    allidx = np.concatenate([s.train_idx for s in splits])
    assert len(np.unique(allidx)) == len(allidx), "train indices overlap"
    return allidx


def _assert_test_matches_train(splits, train_y, test_y, tol: float) -> None:
    for s in splits:
        tr = np.bincount(train_y[s.train_idx], minlength=100) / len(s.train_idx)
        te = np.bincount(test_y[s.test_idx], minlength=100) / len(s.test_idx)
        assert set(np.flatnonzero(tr)) == set(np.flatnonzero(te))
        if len(s.test_idx) >= 50:  # tiny test sets are dominated by rounding and the one-per-class floor
            assert np.abs(tr - te).max() <= tol + 1 / len(s.test_idx)
        assert len(np.unique(s.test_idx)) == len(s.test_idx)
        expected = len(s.train_idx) * len(test_y) / len(train_y)
        assert abs(len(s.test_idx) - expected) <= max(2, 0.05 * expected)


@pytest.mark.parametrize(
    "train_y,test_y,num_classes,num_clients,cpc",
    [(TRAIN10, TEST10, 10, 20, 2), (TRAIN100, TEST100, 100, 20, 10), (TRAIN10, TEST10, 10, 7, 3)],
)
def test_pathological_invariants(train_y, test_y, num_classes, num_clients, cpc) -> None:
    splits = partition_clients(
        train_y, test_y, num_classes, num_clients, kind="pathological", classes_per_client=cpc, seed=3
    )
    assert len(splits) == num_clients
    used = set()
    for s in splits:
        assert s.train_idx.dtype == np.int64 and s.test_idx.dtype == np.int64
        cls = set(np.unique(train_y[s.train_idx]).tolist())
        assert len(cls) == cpc
        used |= cls
    assert used == set(range(num_classes))
    allidx = _assert_disjoint(splits)
    assert len(allidx) == len(train_y)  # every class is used, so all samples are assigned
    _assert_test_matches_train(splits, train_y, test_y, tol=0.02)


@pytest.mark.parametrize("train_y,test_y,num_classes,expected", [(TRAIN10, TEST10, 10, 2), (TRAIN100, TEST100, 100, 10)])
def test_pathological_default_classes_per_client(train_y, test_y, num_classes, expected) -> None:
    splits = partition_clients(train_y, test_y, num_classes, 20)
    assert {len(np.unique(train_y[s.train_idx])) for s in splits} == {expected}


def test_pathological_shares_within_bounds() -> None:
    # With 2 holders per class and shares in [0.4, 0.6], each holder gets 40%..60% of the class.
    splits = partition_clients(TRAIN10, TEST10, 10, 10, seed=0, share_low=0.4, share_high=0.6)
    for s in splits:
        for c, n in zip(*np.unique(TRAIN10[s.train_idx], return_counts=True)):
            holders = sum(c in set(TRAIN10[t.train_idx]) for t in splits)
            if holders == 2:
                assert 0.4 * 500 - 1 <= n <= 0.6 * 500 + 1


def test_pathological_deterministic() -> None:
    a = partition_clients(TRAIN10, TEST10, 10, 20, seed=5)
    b = partition_clients(TRAIN10, TEST10, 10, 20, seed=5)
    c = partition_clients(TRAIN10, TEST10, 10, 20, seed=6)
    assert all(np.array_equal(x.train_idx, y.train_idx) and np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, b))
    assert any(not np.array_equal(x.train_idx, y.train_idx) for x, y in zip(a, c))


@given(
    num_classes=st.integers(1, 12),
    num_clients=st.integers(1, 15),
    cpc=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_pathological_property(num_classes: int, num_clients: int, cpc: int, seed: int) -> None:
    train_y, test_y = labels(num_classes, 30, seed), labels(num_classes, 6, seed + 1)
    if cpc > num_classes or num_clients * cpc < num_classes:
        with pytest.raises(UserError):
            partition_clients(train_y, test_y, num_classes, num_clients, classes_per_client=cpc, seed=seed)
        return
    # At most 15 holders per class and 30 samples per class: always feasible.
    splits = partition_clients(train_y, test_y, num_classes, num_clients, classes_per_client=cpc, seed=seed)
    assert all(len(np.unique(train_y[s.train_idx])) == cpc for s in splits)
    assert len(_assert_disjoint(splits)) == len(train_y)
    for s in splits:
        assert set(np.unique(test_y[s.test_idx])) == set(np.unique(train_y[s.train_idx]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_clients=4, classes_per_client=2), r"num_clients=4 x classes_per_client=2 < num_classes=10"),
        (dict(num_clients=10, classes_per_client=11), r"classes_per_client=11"),
        (dict(num_clients=10, classes_per_client=0), r"classes_per_client=0"),
        (dict(num_clients=0), r"num_clients"),
        (dict(num_clients=5, kind="shards"), r"pathological, dirichlet, iid"),
        (dict(num_clients=5, share_low=0.7, share_high=0.6), r"share_low"),
    ],
)
def test_impossible_requests(kwargs, match) -> None:
    n = kwargs.pop("num_clients")
    with pytest.raises(UserError, match=match):
        partition_clients(TRAIN10, TEST10, 10, n, **kwargs)


def test_pathological_too_few_samples() -> None:
    train_y = np.array([0, 1, 1, 1, 1, 1, 1, 1])  # enough samples in all (8 = 4 x 2), too few of class 0
    with pytest.raises(UserError, match="class 0 has 1 training samples for"):
        partition_clients(train_y, train_y, 2, 4, classes_per_client=2)


def test_bad_labels() -> None:
    with pytest.raises(UserError, match="0..9"):
        partition_clients(np.array([0, 10]), TEST10, 10, 2, kind="iid")


def test_dirichlet_min_samples_and_coverage() -> None:
    splits = partition_clients(TRAIN10, TEST10, 10, 20, kind="dirichlet", alpha=0.3, min_samples=50, seed=1)
    assert min(len(s.train_idx) for s in splits) >= 50
    assert len(_assert_disjoint(splits)) == len(TRAIN10)
    sizes = [len(s.train_idx) for s in splits]
    assert max(sizes) > 2 * min(sizes)  # really non-IID at small alpha
    _assert_test_matches_train(splits, TRAIN10, TEST10, tol=0.03)
    again = partition_clients(TRAIN10, TEST10, 10, 20, kind="dirichlet", alpha=0.3, min_samples=50, seed=1)
    assert all(np.array_equal(a.train_idx, b.train_idx) for a, b in zip(splits, again))


def test_dirichlet_impossible_raises_immediately() -> None:
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"num_clients=11 x min_samples=500 exceeds the 5000"):
        partition_clients(TRAIN10, TEST10, 10, 11, kind="dirichlet", min_samples=500)
    assert time.perf_counter() - start < 1.0


def test_dirichlet_gives_up_after_bounded_attempts() -> None:
    # Feasible on paper (exactly 100 each) but practically never drawn at tiny alpha.
    train_y = labels(10, 100)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"alpha=0.01") as exc:
        partition_clients(train_y, train_y, 10, 10, kind="dirichlet", alpha=0.01, min_samples=100)
    assert "num_clients=10" in str(exc.value) and "min_samples=100" in str(exc.value)
    assert time.perf_counter() - start < 10.0


def test_dirichlet_bad_alpha() -> None:
    with pytest.raises(UserError, match="alpha"):
        partition_clients(TRAIN10, TEST10, 10, 5, kind="dirichlet", alpha=0.0)


def test_iid_balanced() -> None:
    splits = partition_clients(TRAIN10, TEST10, 10, 7, kind="iid", seed=2)
    sizes = [len(s.train_idx) for s in splits]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(TRAIN10)
    tsizes = [len(s.test_idx) for s in splits]
    assert max(tsizes) - min(tsizes) <= 1 and sum(tsizes) == len(TEST10)
    _assert_disjoint(splits)
    with pytest.raises(UserError, match="num_clients=5001"):
        partition_clients(TRAIN10, TEST10, 10, 5001, kind="iid")


def test_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    a = partition_clients(torch.from_numpy(TRAIN10), torch.from_numpy(TEST10), 10, 20, seed=0)
    b = partition_clients(TRAIN10, TEST10, 10, 20, seed=0)
    assert all(np.array_equal(x.train_idx, y.train_idx) for x, y in zip(a, b))


def test_partition_counts_json() -> None:
    splits = partition_clients(TRAIN10, TEST10, 10, 20, seed=0)
    counts = partition_counts(splits, TRAIN10, TEST10, 10)
    text = json.dumps(counts)
    back = json.loads(text)
    assert back["num_clients"] == 20 and len(back["clients"]) == 20
    c0 = back["clients"][0]
    assert len(c0["train"]) == 2 and sum(c0["train"].values()) == c0["num_train"] == len(splits[0].train_idx)
    assert sum(c0["test"].values()) == c0["num_test"]
    assert sum(sum(c["train"].values()) for c in back["clients"]) == len(TRAIN10)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_size_skew_makes_client_sizes_long_tailed(kind):
    rng = np.random.default_rng(0)
    train_y, test_y = rng.integers(0, 10, size=20000), rng.integers(0, 10, size=4000)
    even = partition_clients(train_y, test_y, 10, 10, kind=kind, alpha=5.0, seed=3)
    skewed = partition_clients(train_y, test_y, 10, 10, kind=kind, alpha=5.0, size_skew=1.5, seed=3)
    even_sizes = sorted(len(s.train_idx) for s in even)
    skewed_sizes = sorted(len(s.train_idx) for s in skewed)
    assert skewed_sizes[-1] / skewed_sizes[0] > 3 * even_sizes[-1] / even_sizes[0]
    assert sum(skewed_sizes) == sum(even_sizes)
    assert np.unique(np.concatenate([s.train_idx for s in skewed])).size == sum(skewed_sizes)


def test_negative_size_skew_is_a_user_error():
    with pytest.raises(UserError, match="size_skew"):
        partition_clients(np.arange(100) % 10, np.arange(20) % 10, 10, 5, kind="iid", size_skew=-1)


@pytest.mark.parametrize("kind", ["pathological", "dirichlet", "iid"])
def test_more_clients_than_samples_is_refused_before_anything_is_allocated(kind, monkeypatch) -> None:
    """Issue 30: num_clients 387682504 used to run for minutes (per-client weights and class lists)
    before failing, or not fail. The check comes first: size_weights, the first per-client allocation,
    is never reached."""
    from pfedlora.data import partition

    def allocated(*args, **kwargs):
        raise AssertionError("a per-client table was allocated before the size check")

    monkeypatch.setattr(partition, "size_weights", allocated)
    with pytest.raises(UserError, match=r"num_clients=387682504 exceeds the 5000 training samples.*accepted: 1 to 5000"):
        partition_clients(TRAIN10, TEST10, 10, 387_682_504, kind=kind, min_samples=0)


def test_pathological_needs_a_sample_per_client_and_class() -> None:
    with pytest.raises(UserError, match=r"num_clients=2000 x classes_per_client=3 exceeds the 5000 training samples"):
        partition_clients(TRAIN10, TEST10, 10, 2000, kind="pathological", classes_per_client=3)
