"""Every number ``eed evaluate`` reports about one split, from one pass's collected outputs:
:func:`summarize` builds the :class:`EvaluationReport` (top-1, top-5 and ECE of each
classifier, the ensemble and the running ensembles; exit/main agreement), and
:meth:`EvaluationReport.metrics` is the content of ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from eed.metrics import round_floats
from eed.metrics.anytime import AnytimeReport
from eed.metrics.calibration import CalibrationReport
from eed.metrics.classification import (
    agreement_counts,
    ensemble_logits,
    expected_calibration_error,
    running_ensemble_logits,
    topk_accuracy,
)
from eed.metrics.guarantee import GuaranteedThreshold

if TYPE_CHECKING:
    from eed.metrics.collected import Collected


@dataclass
class OutputMetrics:
    """Top-1, top-5 and ECE of one output (a classifier, the ensemble or a running ensemble)."""

    name: str
    top1: float
    top5: float
    ece: float


@dataclass
class EvaluationReport:
    split: str
    num_samples: int
    names: list[str]  # classifiers, exit1..main
    outputs: list[OutputMetrics]  # each classifier, then "ensemble"
    running: list[OutputMetrics]  # "upto_exit1" .. "upto_main": ensemble of the first j
    agreement: Tensor  # (k-1, 2, 2), see agreement_counts
    anytime: AnytimeReport | None = None
    calibration: CalibrationReport | None = None  # temperatures fitted on val, ECE/NLL on this split
    guaranteed: GuaranteedResult | None = None  # the threshold with a guaranteed drop, checked here
    notes: list[str] = field(default_factory=list)  # what was skipped and why

    def metrics(self) -> dict[str, Any]:
        """The content of ``metrics.json``: small, flat-ish groups so that ``dvc exp show``
        and ``dvc metrics diff`` stay readable."""
        split_metrics: dict[str, float] = {}
        for prefix, attribute in (("acc", "top1"), ("top5", "top5"), ("ece", "ece")):
            split_metrics.update({f"{prefix}_{o.name}": getattr(o, attribute) for o in self.outputs})
        running: dict[str, float] = {}
        for prefix, attribute in (("acc", "top1"), ("top5", "top5"), ("ece", "ece")):
            running.update({f"{prefix}_{o.name}": getattr(o, attribute) for o in self.running})
        agreement = {
            name: dict(zip(("both_correct", "exit_only", "main_only", "both_wrong"), map(int, matrix.flatten())))
            for name, matrix in zip(self.names[:-1], self.agreement)
        }
        out: dict[str, Any] = {
            self.split: split_metrics,
            "running_ensemble": running,
            "agreement": agreement,
            "num_samples": self.num_samples,
        }
        if self.anytime is not None:
            out["anytime"] = self.anytime.metrics()
        if self.calibration is not None:
            out["calibration"] = self.calibration.metrics()
        if self.guaranteed is not None:
            out["guaranteed"] = self.guaranteed.metrics()
        return round_floats(out)


@dataclass
class GuaranteedResult:
    """A guaranteed threshold: fitted on ``fit`` 's split, checked on the report's split."""

    fit: GuaranteedThreshold
    check: dict[str, Any]  # guarantee.check_guarantee on the report's split
    calibrated: bool  # fitted on temperature-scaled confidences

    def metrics(self) -> dict[str, Any]:
        fit, check = self.fit, self.check
        out = {
            "max_drop": fit.max_drop,
            "delta": fit.delta,
            "feasible": int(fit.feasible),
            "threshold": None if fit.main_only else fit.threshold,
            "main_only": int(fit.main_only),
            "calibrated": int(self.calibrated),
            "val_drop": fit.val_drop,
            "val_bound": fit.val_bound,
            "accuracy": check["accuracy"],
            "main_accuracy": check["main_accuracy"],
            "drop": check["drop"],
            "held": int(check["held"]),
        }
        if "gflops" in check:  # and what the main output alone costs, the option it must not exceed
            out["gflops"], out["main_only_gflops"] = check["gflops"], check["main_only_gflops"]
        return out


def summarize(collected: Collected, names: Sequence[str], split: str, ece_bins: int = 15) -> EvaluationReport:
    """Every accuracy/calibration number of a split, from its collected logits."""
    logits, labels = collected.logits, collected.labels
    if len(names) != logits.shape[0]:
        raise ValueError(f"{len(names)} names for {logits.shape[0]} classifiers")
    with_ensemble = torch.cat([logits, ensemble_logits(logits)[None]])
    running = running_ensemble_logits(logits)

    def rows(stack: Tensor, row_names: Sequence[str]) -> list[OutputMetrics]:
        top1 = topk_accuracy(stack, labels, 1).tolist()
        top5 = topk_accuracy(stack, labels, 5).tolist()
        ece = expected_calibration_error(stack, labels, ece_bins).tolist()
        return [OutputMetrics(*values) for values in zip(row_names, top1, top5, ece)]

    return EvaluationReport(
        split=split,
        num_samples=collected.num_samples,
        names=list(names),
        outputs=rows(with_ensemble, [*names, "ensemble"]),
        running=rows(running, [f"upto_{name}" for name in names]),
        agreement=agreement_counts(logits, labels),
    )
