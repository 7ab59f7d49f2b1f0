"""The served early-exit model of an evaluated checkpoint, as ``eed evaluate`` and ``eed export``
log it: the network without its training state, the thresholds and temperatures fitted on val
(from an :class:`EvaluationReport`), the normalization and class names (:mod:`eed.serving`),
and the network's ``torch.export`` programs (:mod:`eed.engine.programs`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from eed import data as eed_data
from eed import serving, tracking
from eed.config import Config
from eed.engine.checkpoint import ResolvedSource, model_from_checkpoint, save_checkpoint
from eed.engine.programs import export_programs
from eed.metrics.anytime import ABOVE_ONE
from eed.metrics.summary import EvaluationReport

# Checkpoint entries a served model does not need (the optimizer's state is as large as the weights).
TRAINING_STATE = ("optimizer", "scheduler", "rng", "history", "partial_epoch")


def served_settings(report: EvaluationReport, config: Config, samples: eed_data.SplitTensors) -> dict:
    """The serving settings (:data:`eed.serving.SETTING_KEYS`) of an evaluated network: the budget
    thresholds and the guaranteed one fitted on val, the default (the guaranteed threshold when
    it exists, else the main output for every image: nothing lost by default), the temperatures
    and whether the thresholds were fitted on calibrated confidences (``eval.calibrate``)."""
    thresholds = {f"budget_{fit.budget:g}": fit.threshold for fit in (report.anytime.budgets if report.anytime else [])
                  if fit.threshold is not None}
    guaranteed = report.guaranteed
    if guaranteed is not None and guaranteed.fit.feasible:
        thresholds["max_drop"] = guaranteed.fit.threshold
    temperatures = report.calibration.temperatures if report.calibration else None
    return {"normalization": {"mean": list(samples.normalization.mean), "std": list(samples.normalization.std)},
            "thresholds": thresholds, "class_names": list(samples.class_names), "temperatures": temperatures,
            "calibrated": bool(config.eval.calibrate and temperatures is not None),
            "default": "max_drop" if "max_drop" in thresholds else ABOVE_ONE}


def log_served_model(tracking_uri: str, run_id: str, source: ResolvedSource, report: EvaluationReport,
                     config: Config, split: str) -> str:
    """Log the network of ``source``, evaluated in ``report``, as the served early-exit model of ``run_id``,
    with its settings (:func:`served_settings`) and exported programs; the input example is two
    raw images of ``split``. Returns the logged model's id."""
    samples = eed_data.read_split(config, split, indices=[0, 1])
    settings = served_settings(report, config, samples)
    weights = {key: value for key, value in source.checkpoint.items() if key not in TRAINING_STATE}
    with tempfile.TemporaryDirectory(prefix="eed-served-") as folder:
        checkpoint = save_checkpoint(weights, Path(folder) / "model.pt")
        # Exported from a fresh CPU copy: the evaluated network may sit on a GPU in channels_last.
        programs = Path(folder) / "programs"
        export_programs(model_from_checkpoint(dict(weights)), samples.images.shape[-1], programs)
        return tracking.log_served_model(tracking_uri, run_id, checkpoint, settings,
                                         samples.images.permute(0, 2, 3, 1).numpy(), loader=serving.load_served,
                                         programs=programs)
