"""The served early-exit model of an evaluated checkpoint, as ``eed evaluate`` and ``eed export``
log it: the network without its training state (:meth:`Checkpoint.deployable`), the thresholds
(with their exit rule) and temperatures fitted on val (from an :class:`EvaluationReport`), the normalization and class
names (:mod:`eed.inference.served`), and the network's ``torch.export`` programs
(:mod:`eed.inference.programs`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from eed import data as eed_data
from eed import tracking
from eed.config import Config
from eed.engine.checkpoint import Checkpoint
from eed.engine.run_record import dataset_records
from eed.errors import Stopped
from eed.inference.programs import export_programs
from eed.inference.served import LOAD_DEFAULTS, load_served
from eed.metrics.anytime import ABOVE_ONE
from eed.metrics.summary import EvaluationReport


def served_settings(report: EvaluationReport, config: Config, samples: eed_data.SplitTensors) -> dict:
    """The serving settings (:data:`eed.inference.served.SETTING_KEYS`) of an evaluated network: the budget
    thresholds and the guaranteed one fitted on val, the default (the guaranteed threshold when
    it exists, else the main output for every image: nothing lost by default), the temperatures
    and whether the thresholds were fitted on calibrated confidences (``eval.calibrate``)."""
    thresholds = {
        f"budget_{fit.budget:g}": fit.threshold
        for fit in (report.anytime.budgets if report.anytime else [])
        if fit.threshold is not None
    }
    guaranteed = report.guaranteed
    if guaranteed is not None and guaranteed.fit.feasible:
        thresholds["max_drop"] = guaranteed.fit.threshold
    temperatures = report.calibration.temperatures if report.calibration else None
    return {
        "normalization": {"mean": list(samples.normalization.mean), "std": list(samples.normalization.std)},
        "thresholds": thresholds,
        "class_names": list(samples.class_names),
        "temperatures": temperatures,
        "calibrated": _calibrated(report, config),
        "exit_rule": report.anytime.rule if report.anytime else config.eval.exit_rule,
        "default": "max_drop" if "max_drop" in thresholds else ABOVE_ONE,
    }


def _calibrated(report: EvaluationReport, config: Config) -> bool:
    """Whether the thresholds were fitted on temperature-scaled confidences."""
    return bool(config.eval.calibrate and report.calibration and report.calibration.temperatures is not None)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _gflops(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def served_results(report: EvaluationReport, calibrated: bool, split: str) -> tuple[str, dict[str, float]]:
    """What a served model is and what was measured of it: a Markdown description (the rule, every
    named threshold with its top-1 and GFLOPs on val, where it was fitted, and on ``split`` when that is
    not val; the main output's cost) and the same numbers as metrics (fractions and GFLOPs per image),
    ``served/<threshold>/<split>_acc`` and ``.../<split>_gflops``."""
    rows: list[tuple[str, float | None, dict[str, float | None]]] = []  # (name, tau, {split_acc: .., ...})
    guaranteed = report.guaranteed
    if guaranteed is not None:
        fit, check = guaranteed.fit, guaranteed.check
        rows.append(
            (
                "max_drop",
                None if fit.main_only else fit.threshold,
                {
                    "val_acc": fit.val_accuracy,
                    "val_gflops": fit.val_gflops,
                    f"{split}_acc": check.get("accuracy"),
                    f"{split}_gflops": check.get("gflops"),
                },
            )
        )
    for fit in report.anytime.budgets if report.anytime else []:
        if fit.threshold is not None:
            rows.append(
                (
                    f"budget_{fit.budget:g}",
                    fit.threshold,
                    {
                        "val_acc": fit.fit_accuracy,
                        "val_gflops": fit.fit_gflops,
                        f"{split}_acc": fit.accuracy,
                        f"{split}_gflops": fit.gflops,
                    },
                )
            )
    splits = ["val"] if split == "val" else ["val", split]
    metrics = {
        f"served/{name}/{key}": value
        for name, _, values in rows
        for key, value in values.items()
        if value is not None and key.split("_")[0] in splits
    }
    rule = report.anytime.rule if report.anytime else "confidence"
    scaled = "temperature-scaled " if calibrated else ""
    score = {
        "confidence": f"{scaled}max softmax probability",
        "entropy": f"1 − entropy/log C of its {scaled}softmax",
        "margin": f"top-1 minus top-2 {scaled}softmax probability",
        "patience": "run of classifiers in a row agreeing on the class, over their number",
    }[rule]
    lines = [
        f"**Early exit served by eed** (exit rule `{rule}`). An image leaves at the first exit whose {score} "
        "reaches the threshold τ; otherwise the main output answers. Thresholds fitted on the val split.",
        "",
    ]
    if guaranteed is not None and guaranteed.fit.feasible and guaranteed.fit.main_only:
        lines.append(
            "Default: `max_drop`, the main output alone, no exit head computed: every threshold that met the "
            "guarantee cost more on val than the main output alone."
        )
    elif guaranteed is not None and guaranteed.fit.feasible:
        fit = guaranteed.fit
        lines.append(
            f"Default: `max_drop`, τ {fit.threshold:.3f}: top-1 at most {100 * fit.max_drop:g} points below "
            f"the main output's with probability at least {1 - fit.delta:g} (fixed-sequence testing, "
            f"Clopper–Pearson bounds on {fit.val_samples} val images); the cheapest threshold on val that "
            "met the guarantee, and cheaper than the main output alone."
        )
    else:
        lines.append("Default: the main output for every image (no threshold met the guarantee, or none was asked).")
    header = "| threshold | τ | " + " | ".join(f"{name} top-1 % | {name} GFLOPs" for name in splits) + " |"
    lines += ["", header, "|" + "---|" * (2 + 2 * len(splits))]
    for name, tau, values in rows:
        cells = " | ".join(f"{_pct(values[f'{where}_acc'])} | {_gflops(values[f'{where}_gflops'])}" for where in splits)
        lines.append(f"| `{name}` | {'—' if tau is None else f'{tau:.3f}'} | {cells} |")
    if report.anytime is not None:
        costs = report.anytime.costs
        lines += [
            "",
            f"The main output alone (τ above 1: no exit head computed) costs {costs.main_only:.4f} GFLOPs "
            f"per image; under a τ of at most 1, an image that reaches it has also run every exit head "
            f"({costs.anytime[-1]:.4f}).",
        ]
    return "\n".join(lines), metrics


def log_served_model(
    tracking_uri: str, run_id: str, checkpoint: Checkpoint, report: EvaluationReport, config: Config, split: str
) -> str:
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
            return tracking.log_served_model(
                tracking_uri,
                run_id,
                path,
                settings,
                samples.images.permute(0, 2, 3, 1).numpy(),
                loader=load_served,
                load_defaults=LOAD_DEFAULTS,
                check_options={"compiled": False},  # a check of two images
                programs=programs,
            )
        except Stopped as stopped:  # the run is as it was; the unfinished model is skipped by eed register
            raise Stopped(f"{stopped} while logging the served model") from None


def describe_served_model(
    tracking_uri: str, model_id: str, report: EvaluationReport, config: Config, split: str, results_run_id: str
) -> None:
    """Describe the served model ``model_id`` logged from ``report`` and link its results on val (and
    ``split``) to it, each with the dataset it was measured on, as measured in run ``results_run_id``
    (:func:`served_results`); mark it current."""
    description, metrics = served_results(report, _calibrated(report, config), split)
    records = dataset_records(config, eed_data.load_manifest(config))
    measured_on = {key: records[key.rsplit("/", 1)[1].split("_")[0]] for key in metrics}  # served/<name>/<split>_acc
    tracking.describe_served_model(tracking_uri, model_id, description, metrics, results_run_id, measured_on)
