"""How sure a difference between two methods is: the mean difference of their accuracies and
its confidence interval, over the seeds they share (paired) or, without shared seeds, over
their two sets of runs (Welch).

Paired: the runs of the two methods with the same seed share the data split, the subset and
the initialisation seed, so per-seed differences ``d_s = a_s - b_s`` remove what the seeds
share. The interval is Student's t on those differences: ``mean(d) ± t(1 - (1-c)/2, n-1) *
sd(d) / sqrt(n)``. Welch: ``mean(a) - mean(b) ± t(1 - (1-c)/2, ν) * sqrt(va/na + vb/nb)``, ν
from the Welch–Satterthwaite equation. Either needs two values per side; with fewer there is
a difference but no interval (never a made-up ±).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Pairing = Literal["paired", "welch", "none"]
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Difference:
    """``mean`` of a minus b, in the unit of the values; ``low``/``high`` its interval (None without one)."""

    mean: float
    n: int  # pairs (paired, none with one shared seed), else the smaller side's runs
    pairing: Pairing
    low: float | None = None
    high: float | None = None
    confidence: float = CONFIDENCE

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0: a difference the seeds do not explain."""
        return self.has_interval and (self.low > 0 or self.high < 0)  # type: ignore[operator]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: Sequence[float]) -> float:
    """Sample variance (n - 1)."""
    mean = _mean(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def t_quantile(probability: float, degrees_of_freedom: float) -> float:
    from scipy.stats import t

    return float(t.ppf(probability, degrees_of_freedom))


def paired_difference(differences: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Mean of per-seed differences with Student's t interval (n - 1 degrees of freedom)."""
    n, mean = len(differences), _mean(differences)
    if n < 2:
        return Difference(mean, n, "none", confidence=confidence)
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * math.sqrt(_variance(differences) / n)
    return Difference(mean, n, "paired", mean - half, mean + half, confidence)


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """mean(a) - mean(b) with Welch's interval; no interval unless both sides have two values."""
    mean = _mean(a) - _mean(b)
    if min(len(a), len(b)) < 2:
        return Difference(mean, min(len(a), len(b)), "none", confidence=confidence)
    spread_a, spread_b = _variance(a) / len(a), _variance(b) / len(b)
    standard_error = math.sqrt(spread_a + spread_b)
    if standard_error == 0:
        return Difference(mean, min(len(a), len(b)), "welch", mean, mean, confidence)
    freedom = (spread_a + spread_b) ** 2 / (spread_a**2 / (len(a) - 1) + spread_b**2 / (len(b) - 1))
    half = t_quantile(1 - (1 - confidence) / 2, freedom) * standard_error
    return Difference(mean, min(len(a), len(b)), "welch", mean - half, mean + half, confidence)


def seed_difference(a: Mapping[str, float], b: Mapping[str, float], confidence: float = CONFIDENCE) -> Difference:
    """a minus b, each ``{seed: value}``: paired over the shared seeds when there are at least two,
    else Welch over all runs of each, else the one shared pair (or the means) without an interval."""
    shared = [seed for seed in a if seed in b]
    if len(shared) >= 2:
        return paired_difference([a[seed] - b[seed] for seed in shared], confidence)
    welch = welch_difference(list(a.values()), list(b.values()), confidence)
    if welch.has_interval or not shared:
        return welch
    return paired_difference([a[shared[0]] - b[shared[0]]], confidence)
