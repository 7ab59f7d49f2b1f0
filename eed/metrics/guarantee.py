"""Early-exit thresholds with a finite-sample guarantee on the accuracy drop (Learn then
Test: Angelopoulos, Bates, Candès, Jordan & Lei, *Learn then Test: Calibrating Predictive
Algorithms to Achieve Risk Control*, 2021, with fixed-sequence testing).

What is controlled. For a threshold tau (the rule of :mod:`eed.metrics.anytime`), the drop
is ``drop(tau) = acc_main - acc_early_exit(tau)`` on the data distribution. We choose tau-hat
on the validation split so that, over the draw of that split (i.i.d. from the distribution
the test split comes from),

    P( drop(tau-hat) > max_drop ) <= delta.

The per-sample loss ``1[main correct] - 1[early exit correct]`` lies in {-1, 0, 1}, so the drop
is a difference of two probabilities, estimated from two counts on the n validation samples:

* ``lost``:   main correct, early exit wrong   (p_lost   = P(main right, early wrong));
* ``gained``: main wrong, early exit correct   (p_gained = P(main wrong, early right));

    drop(tau) = p_lost - p_gained,   empirical drop = (lost - gained) / n.

Why the bound is valid. ``lost`` is exactly Binomial(n, p_lost) and ``gained`` exactly
Binomial(n, p_gained) (they are dependent, which does not matter below). The one-sided
Clopper-Pearson bounds at level delta/2 each satisfy P(p_lost > U) <= delta/2 and
P(p_gained < L) <= delta/2 exactly (no asymptotics), so by the union bound
P(drop(tau) > U - L) <= delta. Hence the test "declare tau safe when U - L <= max_drop" rejects
H0: drop(tau) > max_drop with probability at most delta when H0 is true: it is a level-delta
test (equivalently, its p-value, the smallest level at which it rejects, is valid).

Why several thresholds keep the guarantee. Fixed-sequence testing: the thresholds are ordered
before seeing data, from strict (high tau: almost everything reaches the main output, drop
near 0) to loose, each is tested at the full level delta, and testing stops at the first one
that is not declared safe. A threshold with drop > max_drop can only be declared safe if the
first such threshold in the order was wrongly declared safe, which happens with probability
<= delta; so every declared-safe threshold at once has drop <= max_drop with probability >= 1 -
delta (the family-wise error). No monotonicity of drop(tau) is needed for this.

Which one to use. Since the guarantee covers every declared-safe threshold together, any of them
may be chosen after seeing the validation data: the cheapest on validation is (with the costs;
without them, the loosest). The main output alone (tau = :data:`ABOVE_ONE`: nothing can leave
early, so no exit head is computed; drop 0 by definition) is always a candidate, at its own cost:
a threshold that lets few samples out can cost more than it, since every sample that reaches
the main output has also paid every exit head. If nothing is declared safe the answer is the
main output too, flagged ``feasible=False``. Thresholds above 1 are that option and are not tested.

The Clopper-Pearson bounds are exact beta quantiles, computed here without scipy: the
regularized incomplete beta function from ``math.lgamma`` and its continued fraction, inverted
by bisection and rounded outward (upper bounds up, lower bounds down) so they stay conservative.

Entry points: :func:`fit_guaranteed_threshold` on validation logits, :func:`check_guarantee` on
test logits; :func:`certify` runs the test on :class:`DropCounts` built any other way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from eed.metrics.anytime import ABOVE_ONE, exit_indices, sample_costs

# Continued fraction of the incomplete beta: relative tolerance and iteration cap. It needs
# O(sqrt(max(a, b))) terms: a few milliseconds per bound even for 100,000 samples.
_CF_TOLERANCE = 1e-15
_CF_MAX_TERMS = 100_000
_TINY = 1e-300
# Bisection steps of the beta quantile on [0, 1]: 2^-200 is below any float64 we could need.
_QUANTILE_STEPS = 200


# --------------------------------------------------------------------------- exact binomial bounds


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes' ``betacf``)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_TERMS + 1):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),  # even step
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):  # odd step
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _CF_TOLERANCE:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the beta(a, b) CDF at x (a, b > 0; x in [0, 1])."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The fraction converges fast on the side of the mean that x lies on; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float, round_up: bool) -> float:
    """x with I_x(a, b) = q, by bisection; the end of the final bracket on the requested side."""
    low, high = 0.0, 1.0
    for _ in range(_QUANTILE_STEPS):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if regularized_incomplete_beta(a, b, middle) < q:
            low = middle
        else:
            high = middle
    return high if round_up else low


def _check_binomial(successes: int, trials: int, delta: float) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


@lru_cache(maxsize=65536)
def _upper(successes: int, trials: int, delta: float) -> float:
    if successes == trials:
        return 1.0
    return _beta_quantile(1.0 - delta, successes + 1, trials - successes, round_up=True)


@lru_cache(maxsize=65536)
def _lower(successes: int, trials: int, delta: float) -> float:
    if successes == 0:
        return 0.0
    return _beta_quantile(delta, successes, trials - successes + 1, round_up=False)


def clopper_pearson_upper(successes: int, trials: int, delta: float) -> float:
    """One-sided exact upper confidence bound U on a binomial proportion p:
    P(p > U) <= delta. U solves P(Binomial(trials, U) <= successes) = delta, i.e. the
    (1 - delta) quantile of Beta(successes + 1, trials - successes); 1 when successes = trials."""
    successes, trials, delta = int(successes), int(trials), float(delta)
    _check_binomial(successes, trials, delta)
    return _upper(successes, trials, delta)


def clopper_pearson_lower(successes: int, trials: int, delta: float) -> float:
    """One-sided exact lower confidence bound L: P(p < L) <= delta. The delta quantile of
    Beta(successes, trials - successes + 1); 0 when successes = 0."""
    successes, trials, delta = int(successes), int(trials), float(delta)
    _check_binomial(successes, trials, delta)
    return _lower(successes, trials, delta)


def drop_upper_bound(lost: int, gained: int, samples: int, delta: float) -> float:
    """Upper confidence bound on drop = p_lost - p_gained at level delta (union bound over
    two one-sided Clopper-Pearson bounds at delta / 2): P(drop > bound) <= delta."""
    if int(lost) + int(gained) > int(samples):
        raise ValueError(f"lost ({lost}) + gained ({gained}) cannot exceed the {samples} samples")
    return clopper_pearson_upper(lost, samples, delta / 2) - clopper_pearson_lower(gained, samples, delta / 2)


def fixed_sequence_rejections(upper_bounds: Iterable[float], max_drop: float) -> int:
    """Fixed-sequence testing: how many leading hypotheses are declared safe (bound <= max_drop),
    stopping at the first that is not. ``upper_bounds`` is consumed lazily, in the order tested,
    so bounds after the first failure are never computed."""
    rejected = 0
    for bound in upper_bounds:
        if bound > max_drop:
            break
        rejected += 1
    return rejected


# --------------------------------------------------------------------------- counts per threshold


@dataclass
class DropCounts:
    """Per threshold, how early exit's predictions differ from the main output's on one split."""

    thresholds: Tensor  # (T,) float64
    samples: int  # n
    lost: Tensor  # (T,) int64: main correct, early exit wrong
    gained: Tensor  # (T,) int64: main wrong, early exit correct
    accuracy: Tensor  # (T,) early-exit accuracy
    main_accuracy: float
    gflops: Tensor | None  # (T,) average GFLOPs per sample, when costs were given
    main_gflops: float | None  # the main output alone (no exit head), when costs were given

    @property
    def drop(self) -> Tensor:
        """Empirical accuracy drop (lost - gained) / n per threshold."""
        return (self.lost - self.gained).double() / self.samples

    @classmethod
    def from_exits(
        cls,
        thresholds: Tensor,
        exits: Tensor,
        correct: Tensor,
        costs: Sequence[float] | None = None,
        main_only_cost: float | None = None,
    ) -> DropCounts:
        """From the classifier each sample leaves at per threshold (``exits``, (T, n), as
        ``anytime.exit_indices`` gives) and each classifier's correctness (``correct``, (k, n) bool).
        Cheap: a population's ``exits`` can be computed once and indexed by any sample of it.
        ``costs``: anytime costs; ``main_only_cost``: the main output alone (default ``costs[-1]``)."""
        early_correct = torch.gather(correct, 0, exits)  # (T, n)
        main_correct = correct[-1][None]
        thresholds = torch.as_tensor(thresholds, dtype=torch.float64)
        gflops = main_gflops = None
        if costs is not None:
            main_gflops = float(costs[-1] if main_only_cost is None else main_only_cost)
            gflops = sample_costs(costs, exits, thresholds, main_gflops).mean(dim=1)
        return cls(
            thresholds=thresholds,
            samples=correct.shape[1],
            lost=(main_correct & ~early_correct).sum(dim=1),
            gained=(~main_correct & early_correct).sum(dim=1),
            accuracy=early_correct.double().mean(dim=1),
            main_accuracy=float(correct[-1].double().mean()),
            gflops=gflops,
            main_gflops=main_gflops,
        )


def _check_inputs(logits: Tensor, labels: Tensor, costs: Sequence[float] | None) -> None:
    if logits.dim() != 3 or logits.shape[1] == 0:
        raise ValueError(
            f"logits must be (classifiers, samples, classes) with samples > 0, got shape {tuple(logits.shape)}"
        )
    if labels.shape != (logits.shape[1],):
        raise ValueError(
            f"labels must be ({logits.shape[1]},) to match logits {tuple(logits.shape)}, got shape "
            f"{tuple(labels.shape)}"
        )
    if costs is not None and len(costs) != logits.shape[0]:
        raise ValueError(f"{len(costs)} costs for {logits.shape[0]} classifiers")


def drop_counts(
    logits: Tensor,
    labels: Tensor,
    thresholds: Tensor,
    costs: Sequence[float] | None = None,
    main_only_cost: float | None = None,
    rule: str = "confidence",
) -> DropCounts:
    """Early exit under ``rule`` at every threshold at once (``anytime.exit_indices``), compared sample by
    sample with the main output. ``costs``: ``ClassifierCosts.anytime``, for the GFLOPs;
    ``main_only_cost``: ``ClassifierCosts.main_only``. Pass float64 thresholds: in float32,
    :data:`ABOVE_ONE` rounds to 1."""
    _check_inputs(logits, labels, costs)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    correct = logits.argmax(dim=-1) == labels[None]  # (k, n), as anytime.sweep scores it
    return DropCounts.from_exits(thresholds, exit_indices(logits, thresholds, rule), correct, costs, main_only_cost)


# --------------------------------------------------------------------------- the procedure


@dataclass
class GuaranteedThreshold:
    """The threshold chosen on the validation split, with what it promises."""

    threshold: float  # ABOVE_ONE: the main output alone (cheapest, or nothing declared safe)
    feasible: bool  # some threshold <= 1 was declared safe
    max_drop: float  # epsilon: the accuracy drop (fraction) allowed
    delta: float  # the allowed probability that the drop exceeds max_drop
    val_drop: float  # empirical drop at the threshold on validation
    val_bound: float  # its upper confidence bound (0 for the main output: drop is 0 there)
    val_accuracy: float  # early-exit accuracy at the threshold on validation
    val_main_accuracy: float
    val_gflops: float | None  # average GFLOPs per sample on validation, when costs were given
    thresholds_tested: int  # hypotheses tested, including the first that failed
    val_samples: int
    main_only_gflops: float | None = None  # the main output alone, no exit head (the option always there)
    rule: str = "confidence"  # the exit rule whose score the threshold applies to

    @property
    def main_only(self) -> bool:
        """Whether the answer is the main output alone: no exit head is computed."""
        return self.threshold > 1.0


def certify(counts: DropCounts, max_drop: float, delta: float, rule: str = "confidence") -> GuaranteedThreshold:
    """Fixed-sequence testing on one split's counts: thresholds <= 1 from the highest down,
    each declared safe while its drop bound at level delta is <= ``max_drop``. The answer is the
    cheapest of those declared safe and the main output alone (with the counts' costs; without
    them, the loosest declared safe); the main output (``feasible=False``) if none is."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not max_drop >= 0.0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    # Strict to loose, fixed before looking at the data; above 1 is the untested fallback.
    order = [
        t
        for t in torch.sort(counts.thresholds, descending=True, stable=True).indices.tolist()
        if counts.thresholds[t] <= 1.0
    ]
    lost, gained, n = counts.lost.tolist(), counts.gained.tolist(), counts.samples
    bounds: list[float] = []

    def tested_bounds() -> Iterable[float]:
        for t in order:
            bounds.append(drop_upper_bound(lost[t], gained[t], n, delta))
            yield bounds[-1]

    safe = fixed_sequence_rejections(tested_bounds(), max_drop)
    common = {
        "max_drop": float(max_drop),
        "delta": float(delta),
        "val_main_accuracy": counts.main_accuracy,
        "thresholds_tested": len(bounds),
        "val_samples": n,
        "main_only_gflops": counts.main_gflops,
        "feasible": safe > 0,
        "rule": rule,
    }
    position = _cheapest(counts, order[:safe])
    if position is None:
        return GuaranteedThreshold(
            threshold=ABOVE_ONE,
            val_drop=0.0,
            val_bound=0.0,
            val_accuracy=counts.main_accuracy,
            val_gflops=counts.main_gflops,
            **common,
        )
    chosen = order[position]
    return GuaranteedThreshold(
        threshold=float(counts.thresholds[chosen]),
        val_drop=float(counts.drop[chosen]),
        val_bound=bounds[position],
        val_accuracy=float(counts.accuracy[chosen]),
        val_gflops=None if counts.gflops is None else float(counts.gflops[chosen]),
        **common,
    )


def _cheapest(counts: DropCounts, safe: list[int]) -> int | None:
    """Position in ``safe`` of the threshold to use: the lowest validation cost (ties: the higher
    accuracy, then the stricter), None when the main output alone costs no more (or nothing is
    safe). Without costs: the loosest."""
    if not safe:
        return None
    gflops = counts.gflops
    if gflops is None or counts.main_gflops is None:
        return len(safe) - 1
    position = min(range(len(safe)), key=lambda i: (float(gflops[safe[i]]), -float(counts.accuracy[safe[i]])))
    return None if counts.main_gflops <= float(gflops[safe[position]]) else position


def fit_guaranteed_threshold(
    logits: Tensor,
    labels: Tensor,
    thresholds: Tensor,
    max_drop: float,
    delta: float,
    costs: Sequence[float] | None = None,
    main_only_cost: float | None = None,
    rule: str = "confidence",
) -> GuaranteedThreshold:
    """The cheapest threshold declared safe by fixed-sequence testing on this split (validation),
    or the main output alone when that costs no more: with probability >= 1 - delta over the
    split's draw, its true accuracy drop against the main output is <= ``max_drop``. ``thresholds``
    in any order (tested from the highest down); ``costs``: ``ClassifierCosts.anytime`` and
    ``main_only_cost``: ``ClassifierCosts.main_only`` (without costs: the loosest safe threshold); ``rule``:
    the exit rule (``anytime.EXIT_RULES``)."""
    return certify(drop_counts(logits, labels, thresholds, costs, main_only_cost, rule), max_drop, delta, rule)


def check_guarantee(
    fit: GuaranteedThreshold, logits: Tensor, labels: Tensor, costs: Sequence[float] | None = None
) -> dict[str, Any]:
    """How the fitted threshold does on another split (test): realised drop against the main
    output, accuracies, GFLOPs (with ``costs``, and its share of the main output alone) and
    whether the promised bound ``held``."""
    counts = drop_counts(
        logits, labels, torch.tensor([fit.threshold], dtype=torch.float64), costs, fit.main_only_gflops, fit.rule
    )
    # The drop from the counts, not acc_main - acc: a float difference could cross max_drop by rounding.
    drop = float(counts.drop[0])
    out: dict[str, Any] = {
        "threshold": fit.threshold,
        "feasible": fit.feasible,
        "max_drop": fit.max_drop,
        "delta": fit.delta,
        "accuracy": float(counts.accuracy[0]),
        "main_accuracy": counts.main_accuracy,
        "drop": drop,
        "held": drop <= fit.max_drop,
        "samples": counts.samples,
    }
    if counts.gflops is not None:
        out["gflops"] = float(counts.gflops[0])
        out["main_only_gflops"] = counts.main_gflops
    out["main_only"] = fit.main_only
    out["rule"] = fit.rule
    return out
