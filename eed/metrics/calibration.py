"""Temperature scaling of every classifier of a multi-exit network (Guo et al., *On
Calibration of Modern Neural Networks*, ICML 2017).

Each classifier i gets one scalar temperature T_i > 0; its calibrated probabilities are
softmax(z / T_i). T_i is the value that minimises the negative log-likelihood (NLL) of the
labels on a held-out split (validation), and is then applied unchanged to another split
(test). Dividing logits by a positive scalar never changes their order, so the predicted
class, and with it the accuracy of every classifier, stays exactly the same: only the
confidences move (T > 1 softens over-confident outputs, T < 1 sharpens timid ones). Early
exit reads those confidences, so calibrated exits let samples go at better-chosen thresholds.

The fit is a deterministic 1-D search per classifier. With beta = 1/T, the NLL
``mean(logsumexp(beta * z) - beta * z_label)`` is convex in beta, and its derivative
``mean(E_softmax(beta z)[z] - z_label)`` is non-decreasing; we bisect on the sign of that
derivative over log(beta) to a fixed tolerance, with T bounded to
[:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`].
Bisection needs no learning rate or line search, always converges, and gives the same answer
on every run (no LBFGS state, no random start).

Shapes follow :mod:`eed.metrics.classification`: logits ``(k, N, C)`` (index -1 = main
output), labels ``(N,)``; ECE is :func:`~eed.metrics.classification.expected_calibration_error`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from eed.metrics.classification import expected_calibration_error

# Bounds of the fitted temperature: wide enough for any network seen in practice
# (Guo et al. report 1-4), narrow enough that a degenerate split cannot send T to 0 or infinity.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# Bisection stops when the log(1/T) bracket is this narrow: T known to a relative 1e-10,
# far below any difference in NLL or ECE, after about 36 halvings.
LOG_TEMPERATURE_TOLERANCE = 1e-10


# --------------------------------------------------------------------------- validation


def _check_logits_and_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (classifiers, samples, classes), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    k, n, classes = logits.shape
    if k == 0 or n == 0 or classes < 2:
        raise ValueError(
            f"logits need at least one classifier, one sample and two classes, got shape {tuple(logits.shape)}"
        )
    if labels.shape != (n,):
        raise ValueError(
            f"labels must be ({n},) to match logits {tuple(logits.shape)}, got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got range [{int(labels.min())}, {int(labels.max())}]")


def _check_temperatures(temperatures: Tensor, num_classifiers: int) -> None:
    if temperatures.shape != (num_classifiers,):
        raise ValueError(
            f"need one temperature per classifier ({num_classifiers},), got shape {tuple(temperatures.shape)}"
        )
    if not bool(torch.isfinite(temperatures).all()) or bool((temperatures <= 0).any()):
        raise ValueError(f"temperatures must be finite and > 0, got {temperatures.tolist()}")


# --------------------------------------------------------------------------- the maths


def apply_temperatures(logits: Tensor, temperatures: Tensor) -> Tensor:
    """``logits[i] / temperatures[i]`` for every classifier i: (k, N, C), (k,) -> (k, N, C)."""
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be floating point (classifiers, samples, classes), got shape "
            f"{tuple(logits.shape)} and dtype {logits.dtype}"
        )
    temperatures = torch.as_tensor(temperatures, dtype=torch.float64)
    _check_temperatures(temperatures, logits.shape[0])
    return logits / temperatures.to(logits.dtype)[:, None, None]


def nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood (cross-entropy, nats) of each classifier: (k, N, C) -> (k,) float64."""
    _check_logits_and_labels(logits, labels)
    log_probs = logits.double().log_softmax(dim=-1)
    index = labels.long()[None, :, None].expand(logits.shape[0], -1, 1)
    return -log_probs.gather(-1, index).squeeze(-1).mean(dim=1)


def _nll_slope(logits: Tensor, labels: Tensor, inverse_temperature: float) -> float:
    """d NLL / d beta at beta = 1/T for one classifier's (N, C) float64 logits: the mean gap
    between the expected logit under softmax(beta z) and the label's logit."""
    probs = (logits * inverse_temperature).softmax(dim=-1)
    expected = (probs * logits).sum(dim=-1)
    return float((expected - logits.gather(-1, labels[:, None]).squeeze(-1)).mean())


def _fit_one_temperature(logits: Tensor, labels: Tensor) -> float:
    """The NLL-minimising temperature of one classifier, by bisection on the slope's sign."""
    low, high = math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE)  # log beta
    # The slope is non-decreasing in beta: a sign that does not change means the minimum is at a bound.
    if _nll_slope(logits, labels, math.exp(low)) >= 0:
        return MAX_TEMPERATURE
    if _nll_slope(logits, labels, math.exp(high)) <= 0:
        return MIN_TEMPERATURE
    while high - low > LOG_TEMPERATURE_TOLERANCE:
        middle = 0.5 * (low + high)
        if _nll_slope(logits, labels, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return 1.0 / math.exp(0.5 * (low + high))


def fit_temperatures(logits: Tensor, labels: Tensor) -> Tensor:
    """One temperature per classifier minimising the NLL of softmax(logits / T) on this split
    (validation): (k, N, C), (N,) -> (k,) float64, each in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    _check_logits_and_labels(logits, labels)
    labels = labels.long()
    # One classifier at a time in float64: (N, C) memory, not (k, N, C), and exact slopes.
    return torch.tensor(
        [_fit_one_temperature(classifier.double(), labels) for classifier in logits], dtype=torch.float64
    )


# --------------------------------------------------------------------------- the report


@dataclass
class CalibrationReport:
    """Temperatures fitted on one split and the calibration they give on another, per classifier."""

    names: list[str]  # classifiers, exit1..main
    temperatures: list[float]  # fitted on fit_split
    ece_before: list[float]  # on report_split, raw logits
    ece_after: list[float]  # on report_split, logits / temperature
    nll_before: list[float]
    nll_after: list[float]
    fit_split: str
    report_split: str

    def metrics(self) -> dict[str, float]:
        """Flat numbers for ``metrics.json`` / MLflow: ``temperature_exit1``, ``ece_before_exit1``,
        ``ece_after_exit1``, ``nll_before_exit1``, ``nll_after_exit1``, ... for every classifier."""
        out: dict[str, float] = {}
        for i, name in enumerate(self.names):
            out[f"temperature_{name}"] = self.temperatures[i]
            out[f"ece_before_{name}"] = self.ece_before[i]
            out[f"ece_after_{name}"] = self.ece_after[i]
            out[f"nll_before_{name}"] = self.nll_before[i]
            out[f"nll_after_{name}"] = self.nll_after[i]
        return out


def calibrate(
    fit_logits: Tensor,
    fit_labels: Tensor,
    logits: Tensor,
    labels: Tensor,
    names: Sequence[str],
    bins: int = 15,
    fit_split: str = "val",
    report_split: str = "test",
) -> CalibrationReport:
    """Fit temperatures on ``fit_logits`` (validation) and report ECE and NLL before/after on
    ``logits`` (test). Both are (k, N, C) with the same k and C; ``names`` has k entries."""
    _check_logits_and_labels(fit_logits, fit_labels)
    _check_logits_and_labels(logits, labels)
    if fit_logits.shape[0] != logits.shape[0] or fit_logits.shape[2] != logits.shape[2]:
        raise ValueError(
            f"fit logits {tuple(fit_logits.shape)} and report logits {tuple(logits.shape)} must have "
            "the same classifiers and classes"
        )
    if len(names) != logits.shape[0]:
        raise ValueError(f"{len(names)} names for {logits.shape[0]} classifiers")
    temperatures = fit_temperatures(fit_logits, fit_labels)
    scaled = apply_temperatures(logits.double(), temperatures)
    return CalibrationReport(
        names=list(names),
        temperatures=temperatures.tolist(),
        ece_before=expected_calibration_error(logits, labels, bins).tolist(),
        ece_after=expected_calibration_error(scaled, labels, bins).tolist(),
        nll_before=nll(logits, labels).tolist(),
        nll_after=nll(scaled, labels).tolist(),
        fit_split=fit_split,
        report_split=report_split,
    )
