"""Paired statistics for comparisons: how sure a difference between two algorithms is.

Every algorithm of a comparison runs on the same partitions for each seed, so a seed gives a
*pair* (reference accuracy, candidate accuracy) and the per-seed difference removes what the seed
does to both. :func:`paired_difference` reports the mean difference, its 95% confidence interval
(Student t on the paired differences, scipy.stats), a percentile bootstrap interval beside it
from :data:`BOOTSTRAP_MIN_SEEDS` seeds up, the number of pairs and whether the interval excludes
0. Only then is a difference a gain or a loss.

Across several settings (a sweep's points, the federation map's cells), :func:`aggregate_gain`
follows rliable (Agarwal et al., NeurIPS 2021): a stratified bootstrap interval of the mean gain
(seeds resampled within each setting) and the probability of improvement, P(candidate > reference)
averaged over settings (the Mann-Whitney U statistic / (m n) per setting, ties counting 1/2), with
its stratified bootstrap interval (candidate and reference runs resampled independently within
each setting). rliable itself is not a dependency: its bootstrap comes from ``arch``, which does
not import with pandas 3; the same definitions are computed here with numpy and scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
BOOTSTRAP_MIN_SEEDS = 5  # below this a percentile bootstrap of the mean has too few distinct resamples
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs give the same intervals


@dataclass(frozen=True)
class PairedDifference:
    """candidate − reference over the seeds both ran (percentage points for accuracies).

    ``ci_low``/``ci_high``: the Student t 95% interval (None with fewer than 2 pairs);
    ``bootstrap_low``/``bootstrap_high``: the percentile bootstrap 95% interval (None below
    :data:`BOOTSTRAP_MIN_SEEDS` pairs); ``std``: the sample standard deviation of the differences.
    """

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    bootstrap_low: float | None
    bootstrap_high: float | None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def excludes_zero(self) -> bool:
        """True when the t interval lies entirely above or below 0 (a gain or a loss)."""
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def verdict(self) -> str:
        """``gain``, ``loss`` or ``indistinguishable`` (the interval includes 0, or one pair)."""
        if not self.excludes_zero:
            return "indistinguishable"
        return "gain" if self.mean > 0 else "loss"

    def text(self, digits: int = 2) -> str:
        """``+1.33 [−2.46, +5.13] (n=3)``: mean, 95% t interval, pairs."""
        if self.ci_low is None or self.ci_high is None:
            return f"{self.mean:+.{digits}f} (n={self.n}, no interval)"
        return f"{self.mean:+.{digits}f} [{self.ci_low:+.{digits}f}, {self.ci_high:+.{digits}f}] (n={self.n})"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Student t confidence interval of the mean of ``values`` (None for fewer than 2)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    mean = float(values.mean())
    sem = float(scipy.stats.sem(values))
    if sem == 0:  # identical values: no spread measured, the interval is the point
        return mean, mean
    low, high = scipy.stats.t.interval(confidence, df=len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the mean (scipy.stats.bootstrap, fixed seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = scipy.stats.bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=confidence,
                                   method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(reference: Mapping[int, float], candidate: Mapping[int, float]) -> PairedDifference:
    """candidate − reference, paired by seed over the seeds both have (sorted).

    ``reference``/``candidate``: {seed: value}, e.g. final accuracy per seed. ValueError when the
    two share no seed.
    """
    seeds = tuple(sorted(set(reference) & set(candidate)))
    if not seeds:
        raise ValueError(f"no common seed: reference has {sorted(reference)}, candidate has {sorted(candidate)}")
    differences = tuple(float(candidate[s]) - float(reference[s]) for s in seeds)
    mean = float(np.mean(differences))
    std = float(np.std(differences, ddof=1)) if len(differences) > 1 else None
    interval = t_interval(differences)
    boot = bootstrap_interval(differences) if len(differences) >= BOOTSTRAP_MIN_SEEDS else None
    return PairedDifference(seeds, differences, mean, std, *(interval or (None, None)), *(boot or (None, None)))


def seeds_for_difference(std: float | None, difference: float = 1.0, confidence: float = CONFIDENCE,
                         limit: int = 10_000) -> int | None:
    """The fewest seeds whose t interval half-width, at spread ``std`` of the paired differences,
    is below ``difference``: with that many seeds a mean difference of ``difference`` would exclude 0.

    None when ``std`` is unknown (one seed); more than ``limit`` reads as ``limit``.
    """
    if std is None:
        return None
    if std == 0:
        return 2
    for n in range(2, limit + 1):
        if scipy.stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) < difference:
            return n
    return limit


@dataclass(frozen=True)
class AggregateGain:
    """candidate vs reference over several settings (rliable's aggregates).

    ``mean_gain``: the mean over settings of each setting's mean paired difference, with its
    stratified bootstrap 95% interval; ``probability_of_improvement``: P(candidate > reference)
    averaged over settings, with its interval; ``pooled``: the paired t statistics of all per-seed
    differences of all settings taken together; ``settings``: how many; ``runs``: pairs in all.
    """

    settings: int
    runs: int
    mean_gain: float
    mean_gain_low: float
    mean_gain_high: float
    probability_of_improvement: float
    probability_low: float
    probability_high: float
    pooled: PairedDifference

    @property
    def excludes_zero(self) -> bool:
        return self.mean_gain_low > 0 or self.mean_gain_high < 0

    def text(self, digits: int = 2) -> str:
        return (f"mean gain {self.mean_gain:+.{digits}f} [{self.mean_gain_low:+.{digits}f}, "
                f"{self.mean_gain_high:+.{digits}f}], P(improvement) {self.probability_of_improvement:.2f} "
                f"[{self.probability_low:.2f}, {self.probability_high:.2f}] ({self.settings} settings, {self.runs} pairs)")


def probability_of_improvement(candidate: Sequence[float], reference: Sequence[float]) -> float:
    """P(X > Y) for X a candidate run and Y a reference run of one setting, ties counting 1/2
    (scipy's Mann-Whitney U statistic of the candidate / (m n))."""
    if len(candidate) == 0 or len(reference) == 0:
        raise ValueError("probability_of_improvement needs runs of both algorithms")
    statistic = scipy.stats.mannwhitneyu(candidate, reference, alternative="two-sided", method="asymptotic").statistic
    return float(statistic) / (len(candidate) * len(reference))


def _pairwise_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 for each resample: x [R, m], y [R, n] -> [R]."""
    greater = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    ties = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
    return greater + 0.5 * ties


def aggregate_gain(reference: Mapping[str, Mapping[int, float]], candidate: Mapping[str, Mapping[int, float]],
                   confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES) -> AggregateGain:
    """candidate vs reference over the settings both ran ({setting: {seed: value}}).

    Each setting counts once in the means (however many seeds it has). The intervals are
    percentile intervals of a stratified bootstrap with a fixed seed: for the mean gain each
    setting's paired differences are resampled; for the probability of improvement each setting's
    candidate and reference runs are resampled independently (rliable's
    ``StratifiedIndependentBootstrap``).
    """
    settings = [name for name in reference if name in candidate and set(reference[name]) & set(candidate[name])]
    if not settings:
        raise ValueError("no setting has runs of both algorithms on a common seed")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    tail = (1 - confidence) / 2 * 100
    pairs = {name: paired_difference(reference[name], candidate[name]) for name in settings}
    gains = np.zeros(resamples)
    probabilities = np.zeros(resamples)
    for name in settings:
        differences = np.asarray(pairs[name].differences)
        picks = rng.integers(0, len(differences), size=(resamples, len(differences)))
        gains += differences[picks].mean(axis=1)
        x = np.asarray([candidate[name][s] for s in sorted(candidate[name])], dtype=float)
        y = np.asarray([reference[name][s] for s in sorted(reference[name])], dtype=float)
        probabilities += _pairwise_greater(x[rng.integers(0, len(x), size=(resamples, len(x)))],
                                           y[rng.integers(0, len(y), size=(resamples, len(y)))])
    gains /= len(settings)
    probabilities /= len(settings)
    mean_gain = float(np.mean([pairs[name].mean for name in settings]))
    probability = float(np.mean([probability_of_improvement(list(candidate[name].values()), list(reference[name].values()))
                                 for name in settings]))
    pooled_reference = {i: value for i, value in enumerate(v for name in settings for v in
                                                           (reference[name][s] for s in pairs[name].seeds))}
    pooled_candidate = {i: value for i, value in enumerate(v for name in settings for v in
                                                           (candidate[name][s] for s in pairs[name].seeds))}
    return AggregateGain(
        len(settings), sum(p.n for p in pairs.values()), mean_gain,
        float(np.percentile(gains, tail)), float(np.percentile(gains, 100 - tail)),
        probability, float(np.percentile(probabilities, tail)), float(np.percentile(probabilities, 100 - tail)),
        paired_difference(pooled_reference, pooled_candidate))
