"""``eed export``: the served early-exit model of a trained network, logged into its run.

What the evaluate stage logs with every pipeline run, for any checkpoint: one pass over the
validation split fits the temperatures, the budget thresholds and the guaranteed threshold
(:func:`eed.stages.evaluate.fit_early_exit`); the network, its settings and its exported
programs are then logged as the ``served`` model of the training run (:mod:`eed.inference.export`),
or of a stand-alone ``export`` run when the checkpoint is a file of no known run. Nothing is
measured on test.

``eed register``: a run's served model into the MLflow model registry, under an alias.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from eed import data as eed_data
from eed import tracking
from eed.config import Config, require_resolved
from eed.data.catalog import Split
from eed.engine.runtime import setup_runtime
from eed.errors import ConfigError
from eed.inference import export as served_export
from eed.metrics.summary import summarize
from eed.models.from_config import resolve_architecture
from eed.reporting import tables
from eed.stages import stderr, stdout
from eed.stages.common import (
    ResolvedSource,
    collect,
    default_source,
    log_stage_run,
    logging_uri,
    on_runtime,
    source_model,
    stage_params,
)
from eed.stages.evaluate import EVAL_KEYS, fit_early_exit


@dataclass
class ExportResult:
    source: ResolvedSource
    run_id: str  # the run the served model belongs to
    served_model_id: str  # load it as models:/<id>


def export(config: Config, source: str | None = None, *, which: str = "best") -> ExportResult:
    """Fit the serving thresholds of ``source`` (checkpoint file or MLflow run id) on val and log
    the served early-exit model."""
    started = time.time()
    config = resolve_architecture(config)
    source = source or default_source(config)
    if not config.tracking.enabled:
        raise ConfigError("eed export logs the served model to MLflow, and tracking.enabled is false")
    if require_resolved(config.data.val_size, "data.val_size") <= 0:
        raise ConfigError("eed export fits the thresholds and temperatures on val, and data.val_size is 0")
    tracking_uri, resolved, model = source_model(source, config, True, which)
    tracking_uri = logging_uri(tracking_uri)
    if model.num_classifiers == 1:
        raise ConfigError(f"{resolved.description} has no exits (baseline): there is no early exit to serve")
    runtime = setup_runtime(config.train)
    model = on_runtime(model, runtime)
    names, console = model.classifier_names(), stderr()

    def collect_split(name: Split):
        return collect(config, model, runtime, name, console, doing="fitting")

    validation = collect_split("val")
    report = summarize(validation, names, "val", config.eval.ece_bins)
    fit_early_exit(model, validation, names, config, "val", collect_split, report)
    # A checkpoint of no known run gets a stand-alone run to hold its served model.
    run_id = resolved.run_id or log_stage_run(
        "export",
        tracking_uri,
        config,
        resolved,
        "val",
        {},
        [],
        Path("."),
        started=started,
        params=stage_params(config, EVAL_KEYS),
    )
    settings = served_export.served_settings(report, config, eed_data.read_split(config, "val", indices=[0]))
    served_id = served_export.log_served_model(tracking_uri, run_id, resolved.checkpoint, report, config, "val")
    served_export.describe_served_model(tracking_uri, served_id, report, config, "val", run_id)
    printer = stdout()
    printer.print(tables.served_table(report, settings))
    if report.calibration is not None:
        printer.print(tables.calibration_table(report))
    printer.print(f'Served early-exit model of run {run_id}: models:/{served_id} (README, "Deploy")', highlight=False)
    return ExportResult(resolved, run_id, served_id)


@dataclass
class RegisterResult:
    name: str
    alias: str
    version: str
    served_model_id: str
    unfinished: int = 0  # newer served models of the run skipped: they never finished logging


def register(config: Config, run_id: str, alias: str, name: str | None = None) -> RegisterResult:
    """Register run ``run_id``'s served model as a new version of ``name`` (default: the configured
    experiment's name) and point ``alias`` at it: a deployment loads ``models:/<name>@<alias>``."""
    if not config.tracking.enabled:
        raise ConfigError("eed register uses the MLflow model registry, and tracking.enabled is false")
    tracking_uri = tracking.resolve_tracking_uri(config)
    tracking.check_tracking_uri(tracking_uri)
    name = name or config.tracking.experiment
    model_id, version, unfinished = tracking.register_served_model(tracking_uri, run_id, name, alias)
    if unfinished:
        stdout().print(
            f"[yellow]note:[/] skipped {unfinished} newer served model(s) of run {run_id} that never "
            "finished logging (a process stopped while logging them)",
            highlight=False,
        )
    stdout().print(
        f"Registered models:/{model_id} (the served model of run {run_id}) as {name} version {version}; "
        f"load it as models:/{name}@{alias}",
        highlight=False,
    )
    return RegisterResult(name, alias, version, model_id, unfinished)
