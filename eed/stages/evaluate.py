"""``eed evaluate`` and the evaluate stage: every exit, the ensembles, calibration,
agreement and the early-exit curve of a checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from eed.config import Config, require_resolved
from eed.data.catalog import Split
from eed.engine.runtime import setup_runtime
from eed.inference import export as served_export
from eed.metrics.anytime import ClassifierCosts, analyze, threshold_grid
from eed.metrics.calibration import apply_temperatures, calibrate
from eed.metrics.collected import Collected
from eed.metrics.flops import profile_model
from eed.metrics.guarantee import check_guarantee, fit_guaranteed_threshold
from eed.metrics.summary import EvaluationReport, GuaranteedResult, summarize
from eed.models.from_config import resolve_architecture
from eed.models.multi_exit import MultiExitNet
from eed.paths import ensure_writable, in_workspace
from eed.reporting import tables
from eed.reporting.files import write_evaluation_outputs
from eed.reporting.records import figure_caption
from eed.stages import stderr, stdout
from eed.stages.common import (
    SPLITS,
    ResolvedSource,
    choice,
    collect,
    default_source,
    log_stage_run,
    logging_uri,
    on_runtime,
    source_model,
    stage_params,
)

# The params that change what the evaluate stage (and eed export) compute, logged with its run;
# the split is logged as "split".
EVAL_KEYS = (
    "eval.ece_bins",
    "eval.thresholds",
    "eval.exit_rule",
    "eval.budgets",
    "eval.calibrate",
    "eval.max_drop",
    "eval.delta",
    "data.val_size",
)


@dataclass
class EvaluationResult:
    report: EvaluationReport
    files: list[Path]
    source: ResolvedSource
    run_id: str | None = None  # the evaluate run, when logged
    served_model_id: str | None = None  # the served early-exit model logged with the training run


def evaluate(
    config: Config,
    source: str | None = None,
    *,
    split: str | None = None,
    out: Path | None = None,
    which: str = "best",
    log: bool = True,
) -> EvaluationResult:
    """``eed evaluate`` and the evaluate stage: score a checkpoint (file or MLflow run id) on
    a split of the configured dataset, write the outputs to ``out`` and (``log``) log them as
    a child run of the training run."""
    started = time.time()
    config = resolve_architecture(config)
    source = source or default_source(config)
    split = choice("--split", split or config.eval.split, SPLITS)
    out_dir = Path(out or in_workspace(config.paths.out_dir) / "evaluate")
    log = log and config.tracking.enabled
    for folder in (out_dir, out_dir / "figures"):  # an unusable folder fails now, not after the pass
        ensure_writable(folder)
    tracking_uri, resolved, model = source_model(source, config, log, which)
    runtime = setup_runtime(config.train)
    model = on_runtime(model, runtime)
    names, console = model.classifier_names(), stderr()

    def collect_split(name: Split) -> Collected:
        return collect(config, model, runtime, name, console)

    collected = collect_split(split)
    report = summarize(collected, names, split, config.eval.ece_bins)
    # A baseline's curve is the main output alone: one point, but the same files for DVC.
    fit_early_exit(model, collected, names, config, split, collect_split, report)
    if model.num_classifiers == 1:
        report.notes.append("no exits (baseline): no agreement matrices; the early-exit curve is one point")
    files = write_evaluation_outputs(report, out_dir, caption=figure_caption(config))

    run_id = served_id = None
    if log:
        tracking_uri = logging_uri(tracking_uri)
        # The network with its fitted thresholds, servable, in the training run (first: the evaluate
        # run then spans all of the stage's work); a stand-alone evaluation keeps it in its own run.
        servable = model.num_classifiers > 1
        if servable and resolved.run_id:
            served_id = served_export.log_served_model(
                tracking_uri, resolved.run_id, resolved.checkpoint, report, config, split
            )
        run_id = log_stage_run(
            "evaluate",
            tracking_uri,
            config,
            resolved,
            split,
            report.metrics(),
            files,
            out_dir,
            started=started,
            params=stage_params(config, EVAL_KEYS),
        )
        if servable and not resolved.run_id:
            served_id = served_export.log_served_model(tracking_uri, run_id, resolved.checkpoint, report, config, split)
        if served_id:  # its description, and what this run measured of it (the run's page lists the model)
            served_export.describe_served_model(tracking_uri, served_id, report, config, split, run_id)

    printer = stdout()
    for table in tables.evaluation_tables(report):
        printer.print(table)
    for note in report.notes:
        printer.print(f"[yellow]note:[/] {note}")
    printer.print(f"Wrote {len(files)} files to {out_dir}")
    if run_id:
        printer.print(f"MLflow run: {run_id}", highlight=False)
    if served_id:
        printer.print(f'Served early-exit model: models:/{served_id} (README, "Deploy")', highlight=False)
    return EvaluationResult(report, files, resolved, run_id, served_id)


def fit_early_exit(
    model: MultiExitNet,
    collected: Collected,
    names: list[str],
    config: Config,
    split: str,
    collect: Callable[[Split], Collected],
    report: EvaluationReport,
) -> None:
    """Calibration, the early-exit curve on ``split``, the budget thresholds and the guaranteed
    threshold, all fitted on the validation split, into ``report``."""
    costs = ClassifierCosts.from_profile(profile_model(model, collected.input_shape[-1]))
    settings = config.eval
    fit = None  # the validation split's (logits, labels)
    if split == "val":
        fit = collected.logits, collected.labels
        report.notes.append(
            "evaluated on val, the split the thresholds and temperatures are fitted on: "
            "the guarantee and the calibration are not tested on held-out data"
        )
    elif require_resolved(config.data.val_size, "data.val_size") > 0:
        validation = collect("val")
        fit = validation.logits, validation.labels
    else:
        report.notes.append(
            "budgets not fitted, no temperatures, no guaranteed threshold: data.val_size is 0, "
            "so there is no validation split to fit them on"
        )
    logits = collected.logits
    if fit is not None:
        report.calibration = calibrate(
            *fit, collected.logits, collected.labels, names, settings.ece_bins, fit_split="val", report_split=split
        )
        if settings.calibrate:  # early exit on calibrated probabilities (the argmax, so accuracy, is unchanged)
            temperatures = torch.tensor(report.calibration.temperatures, dtype=torch.float64)
            logits = apply_temperatures(logits.double(), temperatures)
            fit = apply_temperatures(fit[0].double(), temperatures), fit[1]
    grid = threshold_grid(settings.thresholds)
    report.anytime = analyze(
        logits,
        collected.labels,
        costs,
        grid,
        names,
        settings.budgets,
        fit[0] if fit else None,
        fit[1] if fit else None,
        "val" if fit else None,
        settings.exit_rule,
    )
    if fit is not None and settings.max_drop is not None and model.num_classifiers > 1:
        chosen = fit_guaranteed_threshold(
            fit[0],
            fit[1],
            grid,
            settings.max_drop,
            settings.delta,
            costs.anytime,
            costs.main_only,
            settings.exit_rule,
        )
        report.guaranteed = GuaranteedResult(
            chosen, check_guarantee(chosen, logits, collected.labels, costs.anytime), calibrated=settings.calibrate
        )
