"""Guaranteed early-exit thresholds: the exact Clopper-Pearson bounds (closed forms, the
binomial tail they solve, scipy, monotonicity, coverage by simulation), fixed-sequence
testing, and the whole procedure's failure rate on a synthetic population whose true drop
curve is known exactly, against a naive rule that the same simulation catches failing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from eed.metrics.anytime import ABOVE_ONE, evaluate_threshold, exit_indices, threshold_grid
from eed.metrics.guarantee import (
    DropCounts,
    GuaranteedThreshold,
    certify,
    check_guarantee,
    clopper_pearson_lower,
    clopper_pearson_upper,
    drop_counts,
    drop_upper_bound,
    fit_guaranteed_threshold,
    fixed_sequence_rejections,
)

# --------------------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("trials", [1, 7, 200, 5000])
@pytest.mark.parametrize("delta", [0.01, 0.05, 0.5])
def test_clopper_pearson_closed_forms(trials, delta):
    # k = 0: (1 - U)^n = delta; k = n: L^n = delta; and the trivial ends.
    assert clopper_pearson_upper(0, trials, delta) == pytest.approx(1 - delta ** (1 / trials), rel=1e-10)
    assert clopper_pearson_lower(trials, trials, delta) == pytest.approx(delta ** (1 / trials), rel=1e-10)
    assert clopper_pearson_upper(trials, trials, delta) == 1.0
    assert clopper_pearson_lower(0, trials, delta) == 0.0


def _binomial_cdf(successes: int, trials: int, p: float) -> float:
    return sum(math.comb(trials, j) * p**j * (1 - p) ** (trials - j) for j in range(successes + 1))


@pytest.mark.parametrize(("successes", "trials"), [(1, 10), (7, 50), (60, 200), (199, 200)])
def test_clopper_pearson_bounds_solve_the_binomial_tail(successes, trials):
    """The definition, checked with exact binomial sums: P(X <= k | U) = delta, P(X >= k | L) = delta."""
    delta = 0.05
    upper = clopper_pearson_upper(successes, trials, delta)
    lower = clopper_pearson_lower(successes, trials, delta)
    assert _binomial_cdf(successes, trials, upper) == pytest.approx(delta, rel=1e-8)
    assert 1 - _binomial_cdf(successes - 1, trials, lower) == pytest.approx(delta, rel=1e-8)


def test_clopper_pearson_matches_scipy():
    beta = pytest.importorskip("scipy.stats").beta
    for trials in (3, 200, 2000, 100_000):
        for successes in sorted({1, max(1, trials // 7), trials // 2, trials - 1}):
            for delta in (0.025, 0.1):
                assert clopper_pearson_upper(successes, trials, delta) == pytest.approx(
                    beta.ppf(1 - delta, successes + 1, trials - successes), abs=1e-11
                )
                assert clopper_pearson_lower(successes, trials, delta) == pytest.approx(
                    beta.ppf(delta, successes, trials - successes + 1), abs=1e-11
                )


def test_clopper_pearson_is_monotone_and_brackets_the_estimate():
    trials, delta = 50, 0.1
    uppers = [clopper_pearson_upper(k, trials, delta) for k in range(trials + 1)]
    lowers = [clopper_pearson_lower(k, trials, delta) for k in range(trials + 1)]
    assert all(a < b for a, b in itertools.pairwise(uppers))
    assert all(a < b for a, b in itertools.pairwise(lowers))
    assert all(lower < k / trials < upper for k, (lower, upper) in enumerate(zip(lowers, uppers)) if 0 < k < trials)
    # A smaller delta asks for more confidence: a wider interval.
    assert clopper_pearson_upper(10, trials, 0.01) > clopper_pearson_upper(10, trials, 0.1)


def test_clopper_pearson_coverage_by_simulation():
    draws, trials, p, delta = 2000, 200, 0.3, 0.1
    generator = torch.Generator().manual_seed(0)
    counts = torch.binomial(torch.full((draws,), float(trials)), torch.full((draws,), p), generator=generator)
    counts = counts.long().tolist()
    slack = 3 * math.sqrt(delta * (1 - delta) / draws)
    upper_misses = sum(clopper_pearson_upper(k, trials, delta) < p for k in counts) / draws
    lower_misses = sum(clopper_pearson_lower(k, trials, delta) > p for k in counts) / draws
    assert upper_misses <= delta + slack and lower_misses <= delta + slack
    # Not valid by being useless: close to the normal approximation's width (z_0.9 sqrt(p(1-p)/n) = 0.042).
    mean_width = sum(clopper_pearson_upper(k, trials, delta) - k / trials for k in counts) / draws
    assert mean_width < 0.05


def test_binomial_inputs_are_checked():
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson_upper(5, 4, 0.1)
    with pytest.raises(ValueError, match="delta"):
        clopper_pearson_lower(1, 4, 0.0)
    with pytest.raises(ValueError, match="cannot exceed"):
        drop_upper_bound(3, 2, 4, 0.1)


def test_drop_bound_is_the_union_of_two_half_level_bounds():
    bound = drop_upper_bound(30, 10, 1000, 0.1)
    assert bound == clopper_pearson_upper(30, 1000, 0.05) - clopper_pearson_lower(10, 1000, 0.05)
    assert bound > (30 - 10) / 1000


# --------------------------------------------------------------------------- fixed-sequence testing


def test_fixed_sequence_stops_at_the_first_failure_and_computes_nothing_after():
    computed = []

    def bounds():
        for bound in (0.0, 0.01, 0.05, 0.0, 0.0):
            computed.append(bound)
            yield bound

    assert fixed_sequence_rejections(bounds(), max_drop=0.02) == 2  # the later 0.0s do not count
    assert computed == [0.0, 0.01, 0.05]
    assert fixed_sequence_rejections([], 0.02) == 0
    assert fixed_sequence_rejections([0.03], 0.02) == 0


# --------------------------------------------------------------------------- a population with a known drop curve

CLASSES = 10
POPULATION = 200_000
COSTS = [1.0, 2.0, 3.0]  # anytime GFLOPs of leaving at exit1, exit2, main
GRID = threshold_grid(51)
MAX_DROP, DELTA = 0.02, 0.1


def synthetic_population(samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two exits and a main output of increasing strength on a shared per-sample easiness: the
    exits are confident mostly on easy samples, as in a real multi-exit network."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (samples,), generator=generator)
    easiness = 2 * torch.rand(samples, generator=generator)
    logits = []
    for strength in (1.5, 2.5, 4.0):
        z = torch.randn(samples, CLASSES, generator=generator)
        z[torch.arange(samples), labels] += strength * easiness + 0.5 * torch.randn(samples, generator=generator)
        logits.append(1.5 * z)
    return torch.stack(logits), labels


@pytest.fixture(scope="module")
def population() -> tuple[Tensor, Tensor, DropCounts]:
    """Sampling validation sets with replacement from this finite population makes it the true
    distribution: its drop per threshold is the exact true drop curve."""
    logits, labels = synthetic_population(POPULATION, seed=0)
    return logits, labels, drop_counts(logits, labels, GRID, COSTS)


@pytest.fixture(scope="module")
def population_indicators(population) -> Tensor:
    """Per population sample, as uint8 rows: ``lost`` per threshold (T), ``gained`` per threshold
    (T), main correct (1). Computed once; a resampled validation set's counts are then one
    gather and one sum, for many trials at once (per-trial tensor ops would dominate the test)."""
    logits, labels, _ = population
    correct = logits.argmax(dim=-1) == labels[None]
    early_correct = torch.gather(correct, 0, exit_indices(logits, GRID))
    main_correct = correct[-1][None]
    return torch.cat([main_correct & ~early_correct, ~main_correct & early_correct, main_correct]).to(torch.uint8)


def resampled_counts(indicators: Tensor, draws: Tensor) -> list[DropCounts]:
    """The :class:`DropCounts` of each validation set ``draws[i]`` (indices into the population)."""
    trials, samples = draws.shape
    sums = indicators[:, draws.flatten()].reshape(-1, trials, samples).sum(dim=-1)  # (2T + 1, trials)
    thresholds = len(GRID)
    lost, gained, main_correct = sums[:thresholds], sums[thresholds : 2 * thresholds], sums[-1]
    return [
        DropCounts(
            thresholds=GRID,
            samples=samples,
            lost=lost[:, i],
            gained=gained[:, i],
            accuracy=(main_correct[i] - lost[:, i] + gained[:, i]).double() / samples,
            main_accuracy=float(main_correct[i]) / samples,
            gflops=None,
            main_gflops=None,
        )
        for i in range(trials)
    ]


def test_the_population_makes_the_problem_non_trivial(population):
    _, _, truth = population
    assert truth.drop[0] > 0.2  # leaving everything at exit 1 costs far more than MAX_DROP
    assert truth.drop[-1] == 0  # the main output alone
    safe = truth.drop <= MAX_DROP
    assert safe.any() and (truth.gflops[safe] < COSTS[-1] - 0.5).any()  # some safe threshold saves a lot


def test_resampled_counts_are_the_counts_of_the_resampled_logits(population, population_indicators):
    """The simulation's shortcut gives what the public path gives on the resampled logits."""
    logits, labels, _ = population
    draws = torch.randint(POPULATION, (2, 2000), generator=torch.Generator().manual_seed(3))
    for draw, shortcut in zip(draws, resampled_counts(population_indicators, draws)):
        direct = drop_counts(logits[:, draw], labels[draw], GRID)
        assert torch.equal(shortcut.lost, direct.lost) and torch.equal(shortcut.gained, direct.gained)
        assert torch.allclose(shortcut.accuracy, direct.accuracy) and shortcut.main_accuracy == direct.main_accuracy
        fit = fit_guaranteed_threshold(logits[:, draw], labels[draw], GRID, MAX_DROP, DELTA)
        assert certify(shortcut, MAX_DROP, DELTA) == certify(direct, MAX_DROP, DELTA) == fit


def test_guaranteed_threshold_fails_at_most_delta_of_the_time(population, population_indicators):
    _, _, truth = population
    trials, samples = 400, 2000
    generator = torch.Generator().manual_seed(1)
    index_of = {threshold: i for i, threshold in enumerate(GRID.tolist())}
    failures = naive_failures = saving = 0
    for _ in range(trials // 100):
        draws = torch.randint(POPULATION, (100, samples), generator=generator)
        for counts in resampled_counts(population_indicators, draws):
            chosen = index_of[certify(counts, MAX_DROP, DELTA).threshold]
            failures += bool(truth.drop[chosen] > MAX_DROP)
            saving += bool(truth.gflops[chosen] < COSTS[-1] - 0.1)  # saves compute on the population
            # The naive rule: the loosest threshold whose validation drop is within MAX_DROP.
            naive = int(torch.nonzero(counts.drop <= MAX_DROP).min())
            naive_failures += bool(truth.drop[naive] > MAX_DROP)
    slack = 3 * math.sqrt(DELTA * (1 - DELTA) / trials)
    assert failures / trials <= DELTA + slack
    # The same simulation catches a rule without the guarantee (so the check above can fail) ...
    assert naive_failures / trials > DELTA + slack
    # ... and the guarantee is not bought by never exiting early.
    assert saving / trials >= 0.9


def test_any_safe_threshold_may_be_chosen_so_the_cheapest_still_fails_at_most_delta(population, population_indicators):
    """Fixed-sequence testing controls the error over every threshold it declares safe at once: picking
    among them by cost (here random costs per trial, and the main output alone sometimes cheaper)
    keeps the failure rate within delta."""
    _, _, truth = population
    trials, samples = 400, 2000
    generator = torch.Generator().manual_seed(2)
    index_of = {threshold: i for i, threshold in enumerate(GRID.tolist())}
    failures = main_only = 0
    for _ in range(trials // 100):
        draws = torch.randint(POPULATION, (100, samples), generator=generator)
        for counts in resampled_counts(population_indicators, draws):
            counts.gflops, counts.main_gflops = torch.rand(len(GRID), generator=generator, dtype=torch.float64), 0.05
            fit = certify(counts, MAX_DROP, DELTA)
            main_only += fit.main_only
            failures += bool(truth.drop[index_of[fit.threshold]] > MAX_DROP)
    assert failures / trials <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / trials)
    assert 0 < main_only < trials  # both kinds of answer were chosen


def counts_of(gflops: list[float], main_gflops: float, lost: list[int] | None = None) -> DropCounts:
    """Hand-made counts on 10,000 samples for thresholds 0.9, 0.6, 0.3 (tested in that order) and above 1."""
    thresholds = torch.tensor([0.9, 0.6, 0.3, ABOVE_ONE], dtype=torch.float64)
    lost_tensor = torch.tensor(lost or [0, 0, 0, 0])
    return DropCounts(
        thresholds=thresholds,
        samples=10_000,
        lost=lost_tensor,
        gained=torch.zeros(4, dtype=torch.long),
        accuracy=0.8 - lost_tensor.double() / 10_000,
        main_accuracy=0.8,
        gflops=torch.tensor(gflops, dtype=torch.float64),
        main_gflops=main_gflops,
    )


def test_the_cheapest_safe_option_is_chosen_never_one_dearer_than_the_main_output_alone():
    # As in a trained network: every sample reaching the main output has paid the exit heads, so the
    # loosest safe threshold (0.3) still costs more than the main output alone: the main output is chosen.
    dear = certify(counts_of([1.30, 1.20, 1.08, 1.0], main_gflops=1.0), MAX_DROP, DELTA)
    assert dear.feasible and dear.main_only and dear.threshold == ABOVE_ONE
    assert (dear.val_gflops, dear.val_drop, dear.val_bound) == (1.0, 0.0, 0.0)
    # A safe threshold cheaper than the main output: the cheapest one, not necessarily the loosest.
    cheap = certify(counts_of([0.95, 0.70, 0.80, 1.0], main_gflops=1.0), MAX_DROP, DELTA)
    assert not cheap.main_only and cheap.threshold == 0.6 and cheap.val_gflops == pytest.approx(0.70)
    # Only the safe prefix competes: 0.3 is cheapest but its drop bound fails, and 0.6 is chosen.
    unsafe = certify(counts_of([0.95, 0.70, 0.40, 1.0], 1.0, lost=[0, 0, 400, 0]), MAX_DROP, DELTA)
    assert unsafe.threshold == 0.6 and unsafe.thresholds_tested == 3


def test_with_costs_that_rise_with_tau_the_fit_is_the_loosest_of_the_safe_prefix(population):
    logits, labels, _ = population
    val_logits, val_labels = logits[:, :2000], labels[:2000]
    fit = fit_guaranteed_threshold(val_logits, val_labels, GRID.flip(0), MAX_DROP, DELTA, COSTS)  # order given
    assert isinstance(fit, GuaranteedThreshold) and fit.feasible and fit.val_samples == 2000
    counts = drop_counts(val_logits, val_labels, GRID)
    bounds = [
        drop_upper_bound(lost, gained, 2000, DELTA)
        for lost, gained in zip(counts.lost.tolist(), counts.gained.tolist())
    ]
    chosen = GRID.tolist().index(fit.threshold)
    assert chosen > 0  # this population cannot exit everything at exit 1
    # Every threshold from 1 down to the chosen one is safe (GRID[-1] is ABOVE_ONE); the next one down is not.
    assert all(bound <= MAX_DROP for bound in bounds[chosen:-1]) and bounds[chosen - 1] > MAX_DROP
    assert fit.thresholds_tested == len(GRID) - chosen  # GRID[chosen - 1 : -1]: down to the first failure
    assert fit.val_bound == pytest.approx(bounds[chosen])
    assert fit.val_drop == pytest.approx(float(counts.drop[chosen]))
    accuracy, gflops = evaluate_threshold(val_logits, val_labels, COSTS, fit.threshold)
    assert (fit.val_accuracy, fit.val_gflops) == pytest.approx((accuracy, gflops))
    assert fit.val_main_accuracy == pytest.approx(float((val_logits[-1].argmax(-1) == val_labels).double().mean()))


def test_check_guarantee_reports_the_test_split(population):
    logits, labels, _ = population
    fit = fit_guaranteed_threshold(logits[:, :2000], labels[:2000], GRID, MAX_DROP, DELTA, COSTS)
    test_logits, test_labels = logits[:, 100_000:110_000], labels[100_000:110_000]
    report = check_guarantee(fit, test_logits, test_labels, COSTS)
    accuracy, gflops = evaluate_threshold(test_logits, test_labels, COSTS, fit.threshold)
    main_accuracy = float((test_logits[-1].argmax(-1) == test_labels).double().mean())
    assert report["accuracy"] == pytest.approx(accuracy) and report["gflops"] == pytest.approx(gflops)
    assert report["main_accuracy"] == pytest.approx(main_accuracy)
    assert report["drop"] == pytest.approx(main_accuracy - accuracy)
    assert report["held"] == (report["drop"] <= MAX_DROP) and report["held"]
    assert report["samples"] == 10_000 and report["threshold"] == fit.threshold
    assert "gflops" not in check_guarantee(fit, test_logits, test_labels)


def test_nothing_certifiable_falls_back_to_the_main_output(population):
    logits, labels, _ = population
    # 20 samples: even a drop of exactly 0 has an upper bound of 1 - 0.05^(1/20) = 0.14 > 0.05.
    few = fit_guaranteed_threshold(logits[:, :20], labels[:20], GRID, 0.05, DELTA, COSTS)
    # 2000 samples but a tolerance below the bound of a zero count (1 - 0.05^(1/2000) = 0.0015).
    strict = fit_guaranteed_threshold(logits[:, :2000], labels[:2000], GRID, 0.001, DELTA, COSTS)
    for fit in (few, strict):
        assert not fit.feasible and fit.threshold == ABOVE_ONE and fit.threshold > 1
        assert fit.val_drop == 0.0 and fit.val_gflops == COSTS[-1] and fit.thresholds_tested == 1
    # Only thresholds above 1 offered: nothing to test, the main output.
    above_one = torch.tensor([ABOVE_ONE], dtype=torch.float64)  # float32 would round it to 1
    only_main = fit_guaranteed_threshold(logits[:, :2000], labels[:2000], above_one, 0.05, DELTA)
    assert not only_main.feasible and only_main.thresholds_tested == 0 and only_main.val_gflops is None


def test_procedure_inputs_are_checked(population):
    logits, labels, _ = population
    with pytest.raises(ValueError, match="delta"):
        fit_guaranteed_threshold(logits[:, :100], labels[:100], GRID, 0.02, 1.0)
    with pytest.raises(ValueError, match="max_drop"):
        fit_guaranteed_threshold(logits[:, :100], labels[:100], GRID, -0.1, 0.1)
    with pytest.raises(ValueError, match="labels must be"):
        fit_guaranteed_threshold(logits[:, :100], labels[:99], GRID, 0.02, 0.1)
    with pytest.raises(ValueError, match="2 costs for 3 classifiers"):
        fit_guaranteed_threshold(logits[:, :100], labels[:100], GRID, 0.02, 0.1, COSTS[:2])
