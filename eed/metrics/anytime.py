"""Anytime (early-exit) inference with a threshold on an exit rule's score.

The rule: a sample leaves at the first classifier whose score is at least the threshold tau;
the main output takes every sample no exit let go. The score is in [0, 1]: the maximum softmax
probability (``confidence``, the paper's), or another of :data:`EXIT_RULES`. So tau = 0 sends
every sample out at exit 1, and any tau above 1 (above every score) sends every sample to the
main output.

Cost accounting (GFLOPs per sample), counting the shared trunk once:

* a sample leaving at exit i has run trunk stages 1..i and the exit heads 1..i it evaluated
  on the way (all of them said "not confident enough" except the last);
* a sample reaching the main output has run every stage, every exit head and the main head.

:class:`ClassifierCosts` holds these "anytime" costs next to the "standalone" ones of the
paper's Table III (stages 1..i + exit i alone: what a network truncated at exit i costs).

Two views of the same rule, which give the same predictions:

* :func:`sweep` works on logits already collected for every classifier (one pass over a
  split, :func:`eed.engine.loops.collect_outputs`) and evaluates many thresholds at once;
* :func:`eed.inference.early_exit.predict` runs the network on a batch and really stops:
  samples that have left are removed from the batch before the next stage runs.

:func:`fit_budgets` picks, on the validation split, the threshold with the best accuracy
whose average cost fits a GFLOPs budget; :func:`evaluate_threshold` reports it on test.
Accuracies are fractions in [0, 1], like every metric the project logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
from torch import Tensor

from eed.config import ExitRule
from eed.models.multi_exit import classifier_names

# A threshold just above 1: no score reaches it, so every sample takes the main output.
ABOVE_ONE = math.nextafter(1.0, 2.0)


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class ClassifierCosts:
    """GFLOPs per sample of each classifier (exit1..exit{k-1}, main), two ways."""

    # Stages 1..i + exit head i only: a network truncated at classifier i (paper Table III).
    standalone: list[float]
    # Stages 1..i + exit heads 1..i (main: everything): a sample leaving there in early exit.
    anytime: list[float]

    @property
    def main_only(self) -> float:
        """The main output without any exit head: what a threshold above 1 costs (nothing can leave
        early, so :func:`eed.inference.early_exit.predict` computes no exit head)."""
        return self.standalone[-1]

    @classmethod
    def from_parts(
        cls, stage_gflops: Sequence[float], exit_gflops: Sequence[float], main_head_gflops: float
    ) -> ClassifierCosts:
        """Exit i attaches after stage i; the main head after the last stage."""
        stages, exits = list(map(float, stage_gflops)), list(map(float, exit_gflops))
        if len(exits) >= len(stages):
            raise ValueError(f"{len(exits)} exits need at least {len(exits) + 1} stages, got {len(stages)}")
        standalone, anytime = [], []
        for i, head in enumerate(exits):
            trunk = sum(stages[: i + 1])
            standalone.append(trunk + head)
            anytime.append(trunk + sum(exits[: i + 1]))
        standalone.append(sum(stages) + main_head_gflops)
        anytime.append(sum(stages) + sum(exits) + main_head_gflops)
        return cls(standalone=standalone, anytime=anytime)

    @classmethod
    def from_profile(cls, profile: Any) -> ClassifierCosts:
        """From an :class:`eed.metrics.flops.FlopsProfile` (whose ``stage_gflops[0]`` includes the stem)."""
        return cls.from_parts(profile.stage_gflops, profile.exit_gflops, profile.main_head_gflops)


# --------------------------------------------------------------------------- the exit rule


def threshold_grid(points: int) -> Tensor:
    """``points`` thresholds evenly spaced in [0, 1], plus :data:`ABOVE_ONE` so that the
    curve ends exactly at the main output (tau = 1 still lets saturated samples out)."""
    return torch.cat(
        [torch.linspace(0.0, 1.0, points, dtype=torch.float64), torch.tensor([ABOVE_ONE], dtype=torch.float64)]
    )


# The exit rules (eval.exit_rule): each gives every classifier a score per sample in [0, 1], and a
# sample leaves at the first classifier whose score reaches the threshold tau.
#   confidence: the max softmax probability (the paper's rule);
#   entropy:    1 - H(p) / log(C), the normalized negative entropy (BranchyNet's rule, as a score);
#   margin:     the top-1 minus the top-2 probability;
#   patience:   s / K when the last s classifiers (this one included) agree on the class, K classifiers
#               in all (PABEE's patience): tau asks for ceil(tau * K) agreeing in a row, so the
#               threshold sweep sweeps the patience.
EXIT_RULES: tuple[str, ...] = get_args(ExitRule)


def check_rule(rule: str) -> str:
    """``rule`` when it is one of :data:`EXIT_RULES`; else a ValueError naming them."""
    if rule not in EXIT_RULES:
        raise ValueError(f"exit rule {rule!r}: one of {', '.join(EXIT_RULES)}")
    return rule


@dataclass
class RuleStep:
    """One classifier judged under a rule, for a batch of samples."""

    score: Tensor  # (N,) in [0, 1]: leave when >= tau
    confidence: Tensor  # (N,) max softmax probability (what an answer reports, whatever the rule)
    classes: Tensor  # (N,) predicted class
    streak: Tensor  # (N,) classifiers in a row, this one included, that predicted this class


def rule_step(logits: Tensor, rule: str, num_classifiers: int, previous: RuleStep | None = None) -> RuleStep:
    """Classifier ``logits`` (N, C) under ``rule``, after ``previous`` (the same samples' step at the
    classifier before; None at exit 1). The one definition of the rules: the sweep
    (:func:`rule_scores`) and the cascade (:func:`eed.inference.early_exit.cascade`) both call it."""
    check_rule(rule)
    probabilities = logits.float().softmax(dim=-1)
    confidence, classes = probabilities.max(dim=-1)
    streak = (
        torch.ones_like(classes)
        if previous is None
        else torch.where(classes == previous.classes, previous.streak + 1, 1)
    )
    several = logits.shape[-1] > 1  # one class: every rule is sure
    if rule == "confidence" or (not several and rule != "patience"):
        score = confidence
    elif rule == "margin":
        top_two = probabilities.topk(2, dim=-1).values
        score = top_two[:, 0] - top_two[:, 1]
    elif rule == "entropy":
        entropy = -(probabilities * probabilities.clamp_min(1e-30).log()).sum(dim=-1)
        score = 1.0 - entropy / math.log(logits.shape[-1])
    else:  # patience
        score = streak.float() / num_classifiers
    return RuleStep(score.clamp(0.0, 1.0), confidence, classes, streak)


def rule_scores(logits: Tensor, rule: str = "confidence") -> Tensor:
    """(k, N) scores of every classifier of ``logits`` (k, N, C) under ``rule``."""
    scores, step = [], None
    for classifier in range(logits.shape[0]):
        step = rule_step(logits[classifier], rule, logits.shape[0], step)
        scores.append(step.score)
    return torch.stack(scores)


def confidences(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum softmax probability and predicted class along the last dimension."""
    confidence, classes = logits.float().softmax(dim=-1).max(dim=-1)
    return confidence, classes


def leaves(score: Tensor, threshold: float | Tensor) -> Tensor:
    """Whether a rule's score lets a sample go, shared by :func:`sweep` and
    :func:`eed.inference.early_exit.predict`: score >= tau. Compared in float64 so that a threshold
    just above 1 is not rounded down to 1."""
    return score.double() >= threshold


def exit_indices(logits: Tensor, thresholds: Tensor, rule: str = "confidence") -> Tensor:
    """Classifier each sample leaves at (0-based; k-1 = main) for each threshold under ``rule``.

    ``logits``: (k, N, C); ``thresholds``: (T,); returns (T, N).
    """
    score = rule_scores(logits, rule)  # (k, N)
    leaving = leaves(score[None], thresholds.double()[:, None, None])  # (T, k, N)
    leaving[:, -1] = True  # the main output takes the rest
    # Index of the first True = number of classifiers before it that did not let the sample go.
    return (leaving.long().cumsum(dim=1) == 0).sum(dim=1)


# --------------------------------------------------------------------------- the sweep


@dataclass
class AnytimeCurve:
    """Accuracy and average cost of early-exit inference for each threshold."""

    names: list[str]  # classifier names, exit1..main
    thresholds: Tensor  # (T,) float64
    accuracy: Tensor  # (T,) fraction of correct predictions
    gflops: Tensor  # (T,) average GFLOPs per sample
    exit_fractions: Tensor  # (T, k) fraction of samples leaving at each classifier
    rule: str = "confidence"  # the exit rule (EXIT_RULES)

    def rows(self) -> list[dict[str, float]]:
        """One dict per threshold: the rows of ``anytime.csv``."""
        rows = []
        for t in range(len(self.thresholds)):
            row = {
                "threshold": float(self.thresholds[t]),
                "gflops": float(self.gflops[t]),
                "accuracy": float(self.accuracy[t]),
            }
            row.update({f"frac_{name}": float(self.exit_fractions[t, i]) for i, name in enumerate(self.names)})
            rows.append(row)
        return rows


def sample_costs(
    costs: Sequence[float], exits: Tensor, thresholds: Tensor, main_only_cost: float | None = None
) -> Tensor:
    """GFLOPs of each sample (T, N) leaving at ``exits`` (T, N): its anytime cost, or under a
    threshold above 1 (nothing leaves early, no exit head is computed) ``main_only_cost``."""
    cost = torch.as_tensor(costs, dtype=torch.float64)[exits]
    if main_only_cost is not None:
        cost[torch.as_tensor(thresholds, dtype=torch.float64) > 1.0] = float(main_only_cost)
    return cost


def sweep(
    logits: Tensor,
    labels: Tensor,
    costs: Sequence[float],
    thresholds: Tensor,
    names: Sequence[str] | None = None,
    main_only_cost: float | None = None,
    rule: str = "confidence",
) -> AnytimeCurve:
    """Early-exit accuracy and cost under ``rule`` for every threshold, from collected logits (k, N, C).

    ``costs`` are the anytime costs of leaving at each classifier (``ClassifierCosts.anytime``);
    ``main_only_cost`` (``ClassifierCosts.main_only``) what a threshold above 1 costs.
    """
    k, n, _ = logits.shape
    if len(costs) != k:
        raise ValueError(f"{len(costs)} costs for {k} classifiers")
    names = list(names) if names is not None else list(classifier_names(k))
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64)
    chosen = exit_indices(logits, thresholds, rule)  # (T, N)
    correct = (logits.argmax(dim=-1) == labels[None]).double()  # (k, N)
    correct_at_exit = torch.gather(correct, 0, chosen)  # (T, N)
    cost_at_exit = sample_costs(costs, chosen, thresholds, main_only_cost)  # (T, N)
    counts = torch.zeros(len(thresholds), k, dtype=torch.float64)
    counts.scatter_add_(1, chosen, torch.ones_like(cost_at_exit))
    return AnytimeCurve(
        names=names,
        thresholds=thresholds,
        accuracy=correct_at_exit.mean(dim=1),
        gflops=cost_at_exit.mean(dim=1),
        exit_fractions=counts / n,
        rule=rule,
    )


def evaluate_threshold(
    logits: Tensor,
    labels: Tensor,
    costs: Sequence[float],
    threshold: float,
    main_only_cost: float | None = None,
    rule: str = "confidence",
) -> tuple[float, float]:
    """(accuracy, average GFLOPs) of early exit at one threshold under ``rule``."""
    curve = sweep(
        logits, labels, costs, torch.tensor([threshold], dtype=torch.float64), main_only_cost=main_only_cost, rule=rule
    )
    return float(curve.accuracy[0]), float(curve.gflops[0])


# --------------------------------------------------------------------------- budgets


@dataclass
class BudgetFit:
    """The threshold chosen for a GFLOPs budget on one split, and how it does on another."""

    budget: float
    threshold: float | None  # None: no threshold fits (the budget is below exit 1's cost)
    fit_accuracy: float | None  # on the split the threshold was chosen on (validation)
    fit_gflops: float | None
    accuracy: float | None = None  # on the reported split (test)
    gflops: float | None = None

    @property
    def feasible(self) -> bool:
        return self.threshold is not None


def fit_budgets(curve: AnytimeCurve, budgets: Sequence[float]) -> list[BudgetFit]:
    """For each budget, the threshold whose average cost fits it with the best accuracy
    (ties: the cheaper one), chosen on the curve of the fitting split. A threshold that costs
    more than the main output alone (the curve's point above 1) is never chosen."""
    above_one = curve.thresholds > 1.0
    ceiling = float(curve.gflops[above_one].min()) if bool(above_one.any()) else float("inf")
    fits = []
    for budget in budgets:
        fitting = torch.nonzero(curve.gflops <= min(budget, ceiling) + 1e-12).flatten().tolist()
        if not fitting:
            fits.append(BudgetFit(float(budget), None, None, None))
            continue
        best = max(fitting, key=lambda t: (float(curve.accuracy[t]), -float(curve.gflops[t])))
        fits.append(
            BudgetFit(
                float(budget), float(curve.thresholds[best]), float(curve.accuracy[best]), float(curve.gflops[best])
            )
        )
    return fits


def report_budgets(
    fits: list[BudgetFit],
    logits: Tensor,
    labels: Tensor,
    costs: Sequence[float],
    main_only_cost: float | None = None,
    rule: str = "confidence",
) -> list[BudgetFit]:
    """Fill in each fitted threshold's accuracy and cost under ``rule`` on another split (test)."""
    for fit in fits:
        if fit.threshold is not None:
            fit.accuracy, fit.gflops = evaluate_threshold(logits, labels, costs, fit.threshold, main_only_cost, rule)
    return fits


# --------------------------------------------------------------------------- the whole analysis


@dataclass
class RuleResult:
    """One exit rule's curve on the reported split and its budget thresholds (fitted on val)."""

    curve: AnytimeCurve
    budgets: list[BudgetFit] = field(default_factory=list)


@dataclass
class AnytimeReport:
    """What ``eed evaluate`` reports about early exit on a split: the chosen rule's curve and
    budgets (``eval.exit_rule``: what the served model uses), and every rule's beside it."""

    curve: AnytimeCurve
    costs: ClassifierCosts
    classifier_accuracy: list[float]  # each classifier alone (the single-exit points)
    budgets: list[BudgetFit] = field(default_factory=list)
    fit_split: str | None = None  # where the budget thresholds were chosen
    rules: dict[str, RuleResult] = field(default_factory=dict)  # every rule, the chosen one included

    @property
    def rule(self) -> str:
        return self.curve.rule

    def metrics(self) -> dict[str, Any]:
        """Compact numbers for ``metrics.json``: standalone cost of each classifier and of the
        ensemble (every stage and every head: the main output's cost plus the exit heads'), the
        exit rule and, per budget, the fitted threshold with its accuracy and cost on the reported
        split; under ``rules``, each rule's budgets the same way."""
        out: dict[str, Any] = {f"gflops_{name}": cost for name, cost in zip(self.curve.names, self.costs.standalone)}
        if len(self.curve.names) > 1:  # averaging every classifier runs every stage and every head
            out["gflops_ensemble"] = self.costs.anytime[-1]
        out["exit_rule"] = self.rule
        out.update(_budget_metrics(self.budgets))
        if any(result.budgets for result in self.rules.values()):
            out["rules"] = {rule: _budget_metrics(result.budgets) for rule, result in self.rules.items()}
        return out


def _budget_metrics(fits: Sequence[BudgetFit]) -> dict[str, Any]:
    return {
        "budget_" + f"{fit.budget:g}".replace(".", "_"): {
            "threshold": fit.threshold,
            "accuracy": fit.accuracy,
            "gflops": fit.gflops,
            "fit_accuracy": fit.fit_accuracy,
        }
        for fit in fits
    }


def analyze(
    logits: Tensor,
    labels: Tensor,
    costs: ClassifierCosts,
    thresholds: Tensor,
    names: Sequence[str],
    budgets: Sequence[float] = (),
    fit_logits: Tensor | None = None,
    fit_labels: Tensor | None = None,
    fit_split: str | None = None,
    rule: str = "confidence",
) -> AnytimeReport:
    """Every exit rule's curve on the reported split, plus budget thresholds fitted on
    ``fit_logits`` (the validation split) and reported on ``logits``; ``rule``'s are the report's
    own. No fitting split: no budgets."""
    check_rule(rule)
    results = {}
    for each in EXIT_RULES:
        result = RuleResult(sweep(logits, labels, costs.anytime, thresholds, names, costs.main_only, each))
        if budgets and fit_logits is not None and fit_labels is not None:
            fit_curve = sweep(fit_logits, fit_labels, costs.anytime, thresholds, names, costs.main_only, each)
            result.budgets = report_budgets(
                fit_budgets(fit_curve, budgets), logits, labels, costs.anytime, costs.main_only, each
            )
        results[each] = result
    accuracy = (logits.argmax(dim=-1) == labels[None]).double().mean(dim=1).tolist()
    return AnytimeReport(
        curve=results[rule].curve,
        costs=costs,
        classifier_accuracy=accuracy,
        budgets=results[rule].budgets,
        fit_split=fit_split,
        rules=results,
    )
