"""Paired statistics checked against hand computations."""

import math

import pytest

from pfedlora.experiments.stats import (
    aggregate_gain, bootstrap_interval, paired_difference, probability_of_improvement, seeds_for_difference,
)

T_975_DF2 = 4.302652729749464  # Student t 97.5% quantile, 2 degrees of freedom (tables)
T_975_DF4 = 2.7764451051977987


def test_paired_difference_pairs_common_seeds_and_matches_the_t_interval_by_hand():
    reference = {0: 50.0, 1: 52.0, 2: 54.0, 7: 10.0}
    candidate = {0: 51.0, 1: 55.0, 2: 54.0, 3: 99.0}
    d = paired_difference(reference, candidate)
    assert d.seeds == (0, 1, 2) and d.n == 3
    assert d.differences == (1.0, 3.0, 0.0)
    mean = 4 / 3
    std = math.sqrt(((1 - mean) ** 2 + (3 - mean) ** 2 + (0 - mean) ** 2) / 2)
    half = T_975_DF2 * std / math.sqrt(3)
    assert d.mean == pytest.approx(mean)
    assert d.std == pytest.approx(std)
    assert (d.ci_low, d.ci_high) == pytest.approx((mean - half, mean + half))
    assert d.ci_low == pytest.approx(-2.461, abs=1e-3) and d.ci_high == pytest.approx(5.128, abs=1e-3)
    assert not d.excludes_zero and d.verdict == "indistinguishable"
    assert d.bootstrap_low is None  # below 5 seeds
    assert d.text() == "+1.33 [-2.46, +5.13] (n=3)"


def test_a_consistent_difference_excludes_zero_and_has_a_bootstrap_from_five_seeds():
    reference = {s: 60.0 + s for s in range(5)}
    candidate = {s: 60.0 + s + diff for s, diff in enumerate([2.0, 3.0, 2.5, 3.5, 2.0])}
    d = paired_difference(reference, candidate)
    diffs = [2.0, 3.0, 2.5, 3.5, 2.0]
    mean = sum(diffs) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    assert (d.ci_low, d.ci_high) == pytest.approx((mean - T_975_DF4 * std / math.sqrt(5), mean + T_975_DF4 * std / math.sqrt(5)))
    assert d.excludes_zero and d.verdict == "gain"
    assert d.bootstrap_low is not None and 2.0 <= d.bootstrap_low < mean < d.bootstrap_high <= 3.5
    assert paired_difference(candidate, reference).verdict == "loss"


def test_bootstrap_interval_matches_the_binomial_by_hand():
    # diffs [0,0,0,0,10]: a resample's mean is 2K with K ~ Binomial(5, 1/5) (times the 10 is drawn).
    # P(K=0) = 0.328 > 2.5%, so the low end is 0; P(K<=2) = 0.942 < 97.5% <= P(K<=3) = 0.993: high end 6
    assert bootstrap_interval([0, 0, 0, 0, 10]) == pytest.approx((0.0, 6.0))
    assert bootstrap_interval([2, 2, 2, 2, 2]) == (2.0, 2.0)


def test_one_seed_has_no_interval_and_no_common_seed_is_an_error():
    d = paired_difference({0: 50.0}, {0: 52.0})
    assert d.n == 1 and d.ci_low is None and d.std is None and not d.excludes_zero
    assert d.text() == "+2.00 (n=1, no interval)"
    with pytest.raises(ValueError, match="no common seed"):
        paired_difference({0: 1.0}, {1: 2.0})


def test_identical_differences_give_a_point_interval():
    d = paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0})
    assert (d.ci_low, d.ci_high) == (1.0, 1.0) and d.excludes_zero


def test_probability_of_improvement_by_hand():
    # pairs (x, y): 1 beats 0; 2 ties 2 twice (1/2 each) and beats 0; 3 beats all: 6 of 9
    assert probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    assert probability_of_improvement([5], [1]) == 1.0


def test_aggregate_gain_by_hand():
    reference = {"a": {s: 50.0 for s in range(5)}, "b": {s: 70.0 for s in range(5)}, "only_ref": {0: 1.0}}
    candidate = {"a": {0: 50.0, 1: 50.0, 2: 50.0, 3: 50.0, 4: 60.0}, "b": {s: 71.0 for s in range(5)}}
    agg = aggregate_gain(reference, candidate)
    assert agg.settings == 2 and agg.runs == 10
    assert agg.mean_gain == pytest.approx((2.0 + 1.0) / 2)
    # setting a's resampled mean lies in [0, 6] (see the binomial above), b's is always 1: ([0, 6] + 1) / 2
    assert (agg.mean_gain_low, agg.mean_gain_high) == pytest.approx((0.5, 3.5))
    assert agg.excludes_zero
    # a: the 60 beats all five 50s, the four 50s tie them: (5 + 4*5/2) / 25 = 0.6; b: 1.0
    assert agg.probability_of_improvement == pytest.approx((0.6 + 1.0) / 2)
    assert 0.5 <= agg.probability_low <= agg.probability_of_improvement <= agg.probability_high <= 1.0
    # pooled paired t over all ten differences: [0,0,0,0,10,1,1,1,1,1]
    assert agg.pooled.n == 10 and agg.pooled.mean == pytest.approx(1.5)


def test_seeds_for_difference_by_hand():
    # std 1: n=7 gives t(0.975, 6) = 2.447 / sqrt(7) = 0.925 < 1; n=6 gives 2.571 / sqrt(6) = 1.050
    assert seeds_for_difference(1.0) == 7
    assert seeds_for_difference(None) is None
    assert seeds_for_difference(2.0) > seeds_for_difference(1.0)
