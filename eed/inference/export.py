"""The served early-exit model of an evaluated checkpoint, as ``eed evaluate`` and ``eed export``
log it: the network without its training state (:meth:`Checkpoint.deployable`), the thresholds
and temperatures fitted on val (from an :class:`EvaluationReport`), the normalization and class
names (:mod:`eed.inference.served`), and the network's ``torch.export`` programs
(:mod:`eed.inference.programs`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from eed import data as eed_data
from eed import tracking
from eed.config import Config
from eed.engine.checkpoint import Checkpoint
from eed.errors import Stopped
from eed.inference.programs import export_programs
from eed.inference.served import load_served
from eed.metrics.anytime import ABOVE_ONE
from eed.metrics.summary import EvaluationReport


def served_settings(report: EvaluationReport, config: Config, samples: eed_data.SplitTensors) -> dict:
    """The serving settings (:data:`eed.inference.served.SETTING_KEYS`) of an evaluated network: the budget
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


def log_served_model(tracking_uri: str, run_id: str, checkpoint: Checkpoint, report: EvaluationReport,
                     config: Config, split: str) -> str:
    """Log the network of ``checkpoint``, evaluated in ``report``, as the served early-exit model of
    ``run_id``, with its settings (:func:`served_settings`) and exported programs; the input example
    is two raw images of ``split``. Returns the logged model's id."""
    samples = eed_data.read_split(config, split, indices=[0, 1])
    settings = served_settings(report, config, samples)
    deployable = checkpoint.deployable()
    with tempfile.TemporaryDirectory(prefix="eed-served-") as folder:
        path = deployable.save(Path(folder) / "model.pt")
        # Exported from a fresh CPU copy: the evaluated network may sit on a GPU in channels_last.
        programs = Path(folder) / "programs"
        export_programs(deployable.model(), samples.images.shape[-1], programs)
        try:
            return tracking.log_served_model(tracking_uri, run_id, path, settings,
                                             samples.images.permute(0, 2, 3, 1).numpy(), loader=load_served,
                                             programs=programs)
        except Stopped as stopped:  # the run is as it was; the unfinished model is skipped by eed register
            raise Stopped(f"{stopped} while logging the served model") from None
