"""The exit rules (eval.exit_rule) against values computed by hand: one sample, three classes,
three classifiers whose classes are 0, 0, 1."""

from __future__ import annotations

import math

import pytest
import torch

from eed.config import ConfigError, load_config
from eed.metrics.anytime import EXIT_RULES, ClassifierCosts, analyze, exit_indices, rule_scores, threshold_grid
from eed.metrics.guarantee import check_guarantee, drop_counts, fit_guaranteed_threshold

# Classifier logits: [2, 1, 0] -> p = (0.6652, 0.2447, 0.0900); [0, 0, 0] + class 0 a little ahead; [0, 3, 0].
LOGITS = torch.tensor([[[2.0, 1.0, 0.0]], [[0.5, 0.0, 0.0]], [[0.0, 3.0, 0.0]]])


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(value) for value in row]
    return [value / sum(exps) for value in exps]


def test_each_rule_scores_as_computed_by_hand():
    first = softmax([2.0, 1.0, 0.0])
    assert first == pytest.approx([0.66524, 0.24473, 0.09003], abs=1e-5)
    entropy = -sum(p * math.log(p) for p in first)  # 0.83240 nats
    scores = {
        rule: rule_scores(LOGITS, rule)[:, 0].tolist() for rule in ("confidence", "margin", "entropy", "patience")
    }
    assert scores["confidence"][0] == pytest.approx(0.66524, abs=1e-5)
    assert scores["margin"][0] == pytest.approx(0.66524 - 0.24473, abs=1e-5)
    assert (
        scores["entropy"][0] == pytest.approx(1 - entropy / math.log(3), abs=1e-5) == pytest.approx(0.24233, abs=1e-5)
    )
    # Classes 0, 0, 1: streaks 1, 2, 1 of the 3 classifiers.
    assert scores["patience"] == pytest.approx([1 / 3, 2 / 3, 1 / 3])


def test_patience_leaves_once_k_classifiers_in_a_row_agree():
    thresholds = torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64)  # 1, 2 and 3 in a row
    assert exit_indices(LOGITS, thresholds, "patience")[:, 0].tolist() == [0, 1, 2]
    # The confidence rule is unchanged: 0.665 leaves at exit 1 under 0.5, not under 0.9.
    assert exit_indices(LOGITS, torch.tensor([0.5, 0.9], dtype=torch.float64))[:, 0].tolist() == [0, 2]


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="exit rule 'patient': one of confidence, entropy, margin, patience"):
        rule_scores(LOGITS, "patient")


# --------------------------------------------------------------------------- every rule through the analysis

# Two exits and the main output, costs 1, 2 and 4 GFLOPs (anytime), the main output alone 3.
COSTS = ClassifierCosts(standalone=[1.0, 2.0, 3.0], anytime=[1.0, 2.0, 4.0])


def two_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """Sample 0: every classifier says 0 (exit 1 sure, p = 0.88); sample 1: exit 1 says 0 (unsure),
    exit 2 and the main output say 1. Labels 0 and 1."""
    logits = torch.tensor([[[2.0, 0.0], [0.1, 0.0]], [[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 3.0]]])
    return logits, torch.tensor([0, 1])


def test_analyze_reports_every_rule_and_keeps_the_chosen_ones_own():
    logits, labels = two_samples()
    grid = threshold_grid(11)
    report = analyze(
        logits,
        labels,
        COSTS,
        grid,
        ["exit1", "exit2", "main"],
        budgets=[1.5],
        fit_logits=logits,
        fit_labels=labels,
        fit_split="val",
        rule="patience",
    )
    assert list(report.rules) == list(EXIT_RULES) and report.rule == "patience"
    assert report.curve is report.rules["patience"].curve and report.budgets is report.rules["patience"].budgets
    # Patience over 3 classifiers: tau 0.5 asks for 2 in a row. Sample 0 leaves at exit 2 (0, 0), sample 1
    # (0, then 1, 1) at the main output: both right, 2 + 4 = 6 GFLOPs for two.
    patience = report.rules["patience"].curve
    at_half = int(torch.nonzero(patience.thresholds == 0.5))
    assert float(patience.accuracy[at_half]) == 1.0 and float(patience.gflops[at_half]) == pytest.approx(3.0)
    # Budget 1.5. Patience: only tau <= 1/3 fits (everything out at exit 1: half right, 1 GFLOP). Confidence,
    # with tau in (0.52, 0.88]: sample 0 leaves at exit 1 (p 0.88), sample 1 (p 0.52) at exit 2 (p 0.88):
    # both right, (1 + 2) / 2 = 1.5 GFLOPs. With two classes entropy and margin order samples as confidence does.
    assert [(fit.accuracy, fit.gflops) for fit in report.rules["patience"].budgets] == [(0.5, 1.0)]
    for rule in ("confidence", "entropy", "margin"):
        assert [(fit.accuracy, fit.gflops) for fit in report.rules[rule].budgets] == [(1.0, 1.5)], rule
    metrics = report.metrics()
    assert metrics["exit_rule"] == "patience" and set(metrics["rules"]) == set(EXIT_RULES)
    assert metrics["rules"]["patience"]["budget_1_5"] == metrics["budget_1_5"]


def test_an_unknown_rule_is_refused_by_the_analysis_and_the_config():
    logits, labels = two_samples()
    with pytest.raises(ValueError, match="exit rule 'patient': one of confidence, entropy, margin, patience"):
        analyze(logits, labels, COSTS, threshold_grid(3), ["exit1", "exit2", "main"], rule="patient")
    with pytest.raises(ConfigError, match="eval.exit_rule.*'confidence', 'entropy', 'margin' or 'patience'"):
        load_config(None, ["eval.exit_rule=patient"])
    assert load_config(None, ["eval.exit_rule=margin"]).eval.exit_rule == "margin"


def test_the_guarantee_is_certified_and_checked_under_the_rule():
    """Patience certifies by its own exits: at tau 0.5 sample 0 leaves at exit 2 and sample 1 goes on to the
    main output, so nothing is lost against the main output, where confidence at 0.5 lets sample 1 out
    at exit 1 (wrong: a loss)."""
    logits, labels = two_samples()
    grid = torch.tensor([0.5], dtype=torch.float64)
    patience = drop_counts(logits, labels, grid, COSTS.anytime, COSTS.main_only, rule="patience")
    confidence = drop_counts(logits, labels, grid, COSTS.anytime, COSTS.main_only)
    assert (patience.lost.tolist(), confidence.lost.tolist()) == ([0], [1])
    fit = fit_guaranteed_threshold(logits, labels, grid, 0.5, 0.5, COSTS.anytime, COSTS.main_only, "patience")
    assert fit.rule == "patience"
    check = check_guarantee(fit, logits, labels, COSTS.anytime)
    assert check["rule"] == "patience" and check["drop"] == 0.0
