"""The exit rules (eval.exit_rule) against values computed by hand: one sample, three classes,
three classifiers whose classes are 0, 0, 1."""

from __future__ import annotations

import math

import pytest
import torch

from eed.metrics.anytime import exit_indices, rule_scores

# Classifier logits: [2, 1, 0] -> p = (0.6652, 0.2447, 0.0900); [0, 0, 0] + class 0 a little ahead; [0, 3, 0].
LOGITS = torch.tensor([[[2.0, 1.0, 0.0]], [[0.5, 0.0, 0.0]], [[0.0, 3.0, 0.0]]])


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(value) for value in row]
    return [value / sum(exps) for value in exps]


def test_each_rule_scores_as_computed_by_hand():
    first = softmax([2.0, 1.0, 0.0])
    assert first == pytest.approx([0.66524, 0.24473, 0.09003], abs=1e-5)
    entropy = -sum(p * math.log(p) for p in first)  # 0.83240 nats
    scores = {rule: rule_scores(LOGITS, rule)[:, 0].tolist() for rule in ("confidence", "margin", "entropy", "patience")}
    assert scores["confidence"][0] == pytest.approx(0.66524, abs=1e-5)
    assert scores["margin"][0] == pytest.approx(0.66524 - 0.24473, abs=1e-5)
    assert scores["entropy"][0] == pytest.approx(1 - entropy / math.log(3), abs=1e-5) == pytest.approx(0.24233, abs=1e-5)
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
