"""Temperature scaling: on logits from a known generative model (softmax(z) is the true
posterior, so z is calibrated by construction) scaled by known factors, the fit recovers the
factors, is the NLL minimiser, improves held-out NLL and ECE, never changes a prediction, is
deterministic, hits its bounds when the data asks for it, and rejects malformed input."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from eed.metrics.calibration import (
    MAX_TEMPERATURE,
    CalibrationReport,
    apply_temperatures,
    calibrate,
    fit_temperatures,
    nll,
)
from eed.metrics.classification import expected_calibration_error, topk_accuracy

CLASSES = 10
# Classifier i's logits are the calibrated ones times FACTORS[i]: over-confident (3),
# calibrated (1), under-confident (0.5). The right temperature is the factor itself.
FACTORS = (3.0, 1.0, 0.5)
NAMES = ["exit1", "exit2", "main"]


def calibrated_split(samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """(k, N, C) logits FACTORS[i] * z and labels drawn from softmax(z): softmax(z) is exactly
    the posterior of the label given z, so z itself is perfectly calibrated."""
    generator = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(samples, CLASSES, generator=generator)
    labels = torch.multinomial(z.softmax(dim=-1), 1, generator=generator).squeeze(1)
    return torch.stack([factor * z for factor in FACTORS]), labels


@pytest.fixture(scope="module")
def splits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    fit_logits, fit_labels = calibrated_split(5000, seed=0)
    logits, labels = calibrated_split(5000, seed=1)
    return fit_logits, fit_labels, logits, labels


@pytest.fixture(scope="module")
def temperatures(splits) -> Tensor:
    fit_logits, fit_labels, _, _ = splits
    return fit_temperatures(fit_logits, fit_labels)


@pytest.fixture(scope="module")
def report(splits) -> CalibrationReport:
    return calibrate(*splits, names=NAMES, bins=15)


def test_fitted_temperatures_recover_the_known_factors(temperatures):
    assert temperatures.shape == (3,) and temperatures.dtype == torch.float64
    for temperature, factor in zip(temperatures.tolist(), FACTORS):
        assert temperature == pytest.approx(factor, rel=0.10)
    assert temperatures[1].item() == pytest.approx(1.0, rel=0.05)  # already calibrated: T stays near 1


def test_fitted_temperature_minimises_the_fitting_nll(splits, temperatures):
    fit_logits, fit_labels, _, _ = splits
    best = nll(apply_temperatures(fit_logits, temperatures), fit_labels)
    for scale in (0.98, 1.02):
        assert (best < nll(apply_temperatures(fit_logits, temperatures * scale), fit_labels)).all()


def test_calibration_improves_held_out_nll_and_ece(splits, temperatures, report):
    assert report.temperatures == temperatures.tolist()  # fitted on the fit split only
    assert isinstance(report, CalibrationReport)
    assert (report.fit_split, report.report_split) == ("val", "test")
    for i in (0, 2):  # the mis-calibrated ones improve clearly
        assert report.nll_after[i] < report.nll_before[i] - 0.05
        assert report.ece_after[i] < report.ece_before[i] / 3
    # The calibrated one barely moves (and is not made worse by more than noise).
    assert report.nll_after[1] == pytest.approx(report.nll_before[1], abs=1e-3)
    assert report.ece_after[1] < 0.03
    # The report's numbers are the module's own NLL and the project's ECE.
    _, _, logits, labels = splits
    assert report.nll_before == pytest.approx(nll(logits, labels).tolist())
    assert report.ece_before == pytest.approx(expected_calibration_error(logits, labels, 15).tolist())


def test_metrics_are_flat_and_named_per_classifier(report):
    metrics = report.metrics()
    assert set(metrics) == {
        f"{prefix}_{name}"
        for name in NAMES
        for prefix in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after")
    }
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["temperature_exit1"] == pytest.approx(3.0, rel=0.10)


def test_temperature_scaling_never_changes_a_prediction(splits):
    _, _, logits, labels = splits
    for temperatures in (torch.tensor([0.05, 1.7, 20.0]), torch.tensor([3.0, 0.2, 7.5])):
        scaled = apply_temperatures(logits, temperatures)
        assert torch.equal(scaled.argmax(dim=-1), logits.argmax(dim=-1))
        assert torch.equal(topk_accuracy(scaled, labels), topk_accuracy(logits, labels))


def test_fit_is_deterministic(splits, temperatures):
    fit_logits, fit_labels, _, _ = splits
    assert torch.equal(fit_temperatures(fit_logits, fit_labels), temperatures)


def test_temperature_stops_at_its_bound_when_logits_carry_no_information():
    # Labels independent of the logits: the NLL keeps falling as T grows (towards uniform).
    generator = torch.Generator().manual_seed(2)
    logits = 5.0 * torch.randn(1, 2000, CLASSES, generator=generator)
    labels = torch.randint(CLASSES, (2000,), generator=generator)
    assert fit_temperatures(logits, labels).tolist() == [MAX_TEMPERATURE]


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.zeros(10, CLASSES), torch.zeros(10, dtype=torch.long), "classifiers, samples, classes"),
        (torch.zeros(2, 10, CLASSES), torch.zeros(9, dtype=torch.long), "labels must be"),
        (torch.zeros(2, 10, CLASSES), torch.full((10,), CLASSES), "labels must lie in"),
        (torch.zeros(2, 10, CLASSES), torch.zeros(10), "integer class indices"),
        (torch.zeros(2, 10, CLASSES, dtype=torch.long), torch.zeros(10, dtype=torch.long), "floating point"),
    ],
)
def test_malformed_logits_or_labels_are_rejected(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperatures(logits, labels)
    with pytest.raises(ValueError, match=message):
        nll(logits, labels)


def test_malformed_temperatures_names_and_splits_are_rejected(splits):
    fit_logits, fit_labels, logits, labels = splits
    with pytest.raises(ValueError, match="one temperature per classifier"):
        apply_temperatures(logits, torch.ones(2))
    with pytest.raises(ValueError, match="> 0"):
        apply_temperatures(logits, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="3 classifiers"):
        calibrate(fit_logits, fit_labels, logits, labels, names=["exit1", "main"])
    with pytest.raises(ValueError, match="same classifiers and classes"):
        calibrate(fit_logits[:2], fit_labels, logits, labels, names=NAMES)
