"""What the stages that read a checkpoint share: option checks, the default source, the
checkpoint's network, and their child run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from eed import data as eed_data
from eed import tracking
from eed.config import Config, flatten
from eed.engine.checkpoint import ResolvedSource, check_classes, model_from_checkpoint, resolve_source
from eed.errors import ConfigError
from eed.models.multi_exit import MultiExitNet
from eed.paths import in_workspace

SPLITS = ("test", "val")
CHECKPOINTS = ("best", "last")


def choice(option: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def default_source(config: Config) -> str:
    """The train stage's selected checkpoint."""
    return str(in_workspace(config.paths.out_dir) / "train" / "checkpoints" / "best.pt")


def source_model(source: str, config: Config, log: bool, which: str) -> tuple[str | None, ResolvedSource,
                                                                               MultiExitNet]:
    """The tracking URI (checked before any pass over data when logging), the resolved
    source and its network, checked against the configured network and dataset."""
    choice("--checkpoint", which, CHECKPOINTS)
    tracking_uri = tracking.resolve_tracking_uri(config) if (log or not Path(source).is_file()) else None
    if log:
        tracking.check_tracking_uri(tracking_uri)
    resolved = resolve_source(source, tracking_uri, which)
    manifest = eed_data.load_manifest(config)
    check_classes(resolved.checkpoint, manifest.class_names, config.data.dataset)
    model = model_from_checkpoint(resolved.checkpoint, arch=config.model.arch, num_classes=manifest.num_classes)
    return tracking_uri, resolved, model


def log_stage_run(stage: str, tracking_uri: str, config: Config, source: ResolvedSource, split: str,
                  metrics: Mapping[str, Any], files: Sequence[Path], out_dir: Path, *, started: float,
                  params: Mapping[str, Any]) -> str:
    """A stage's results as a run named by what it did (``evaluate test best.pt``), nested under
    the training run that made the checkpoint (stand-alone in the configured experiment when
    that run is unknown), lasting from ``started`` (``time.time()``) to now: its ``params``, the
    metrics at step 0 that the training run does not already hold with the same value, and
    every file, kept at its path relative to ``out_dir``."""
    epoch = source.checkpoint.get("epoch")
    name = f"{stage} {split} {source.file_name or 'checkpoint'}"
    stage_run = tracking.MlflowLogger.for_stage(
        tracking_uri, name, stage=stage, parent_run_id=source.run_id, experiment=config.tracking.experiment,
        tags={"split": split, "source": source.description,
              tracking.NOTE_TAG: f"{stage} of {source.description} (epoch {epoch}) on the {split} split"},
        start_time=started)
    with tracking.logged_run(stage_run):
        stage_run.log_params({"split": split, "checkpoint": source.file_name, "checkpoint_epoch": epoch,
                              "source": source.description, **params})
        known = stage_run.parent_metrics()
        flat = tracking.flatten_metrics(metrics)
        stage_run.log_metrics({key: value for key, value in flat.items() if known.get(key) != value}, step=0)
        stage_run.log_artifacts(files, out_dir)
    return stage_run.run_id


def stage_params(config: Config, keys: Sequence[str]) -> dict[str, str]:
    """The flattened ``config`` keys a stage reads (``eval.thresholds`` ...), as run params."""
    flat = flatten(config)
    return {key: value for key, value in flat.items() if any(key == k or key.startswith(k + ".") for k in keys)}
