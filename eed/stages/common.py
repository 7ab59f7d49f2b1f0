"""What the stages that read a checkpoint share: option checks, the source (a checkpoint file or a
tracked run) and its network, the one pass that collects every classifier's outputs over a
split, and their child run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console

from eed import data as eed_data
from eed import tracking
from eed.config import Config, flatten
from eed.data.catalog import Split
from eed.engine.checkpoint import Checkpoint
from eed.engine.loops import collect_outputs
from eed.engine.runtime import Runtime
from eed.errors import ConfigError
from eed.metrics.collected import Collected
from eed.models.multi_exit import MultiExitNet
from eed.paths import in_workspace
from eed.progress import progress_bar, tracked
from eed.stages import stderr

SPLITS: tuple[Split, ...] = ("test", "val")
CHECKPOINTS = ("best", "last")

_Choice = TypeVar("_Choice", bound=str)


def choice(option: str, value: str, allowed: Sequence[_Choice]) -> _Choice:
    """``value``, one of ``allowed`` (typed as they are: a :data:`SPLITS` value is a Split)."""
    for allowed_value in allowed:
        if allowed_value == value:
            return allowed_value
    raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")


def default_source(config: Config) -> str:
    """The train stage's selected checkpoint."""
    return str(in_workspace(config.paths.out_dir) / "train" / "checkpoints" / "best.pt")


# --------------------------------------------------------------------------- the source


@dataclass
class ResolvedSource:
    checkpoint: Checkpoint
    run_id: str | None  # the tracking run that made the checkpoint, if known
    description: str  # for messages: the file, or "run <id> (checkpoints/best.pt)"
    file_name: str = ""  # the checkpoint's file name (best.pt, last.pt, ...)


def resolve_source(source: str, tracking_uri: str | None, which: str = "best") -> ResolvedSource:
    """A checkpoint file, or the id of a tracked run whose ``checkpoints/{which}.pt`` (else
    the other of best/last) is downloaded. Unknown run ids are a :class:`SourceError`."""
    path = Path(source)
    looks_like_path = path.suffix == ".pt" or "/" in source or "\\" in source
    if path.is_file() or (looks_like_path and not tracking.looks_like_run_id(source)) or tracking_uri is None:
        checkpoint = Checkpoint.load(path)  # CheckpointError when missing or not ours
        return ResolvedSource(checkpoint, checkpoint.run_id, str(path), path.name)
    with tracking.downloaded_checkpoint(tracking_uri, source, which) as (local, name):
        checkpoint = Checkpoint.load(local)
    return ResolvedSource(checkpoint, source, f"run {source} (checkpoints/{name})", name)


def logging_uri(tracking_uri: str | None) -> str:
    """The tracking URI of a stage that logs, which :func:`source_model` resolves whenever ``log`` is set."""
    if tracking_uri is None:
        raise ValueError("the stage logs to MLflow, but no tracking URI was resolved (source_model with log=False?)")
    return tracking_uri


def source_model(source: str, config: Config, log: bool, which: str) -> tuple[str | None, ResolvedSource, MultiExitNet]:
    """The tracking URI (checked before any pass over data when logging), the resolved
    source and its network, checked against the configured network and dataset."""
    choice("--checkpoint", which, CHECKPOINTS)
    tracking_uri = tracking.resolve_tracking_uri(config) if (log or not Path(source).is_file()) else None
    if log:
        tracking.check_tracking_uri(logging_uri(tracking_uri))
    resolved = resolve_source(source, tracking_uri, which)
    if log and resolved.run_id and not tracking.run_exists(logging_uri(tracking_uri), resolved.run_id):
        stderr().print(
            f"[yellow]note:[/] run {resolved.run_id}, which made {resolved.description}, is not an active "
            f"run of {tracking_uri} (deleted, or tracking.uri changed): logging into a run of its own"
        )
        resolved.run_id = None
    manifest = eed_data.load_manifest(config)
    resolved.checkpoint.check_classes(manifest.class_names, config.data.dataset)
    model = resolved.checkpoint.model(arch=config.model.arch, num_classes=manifest.num_classes)
    return tracking_uri, resolved, model


# --------------------------------------------------------------------------- one pass over a split


def collect(
    config: Config,
    model: MultiExitNet,
    runtime: Runtime,
    split: Split,
    console: Console,
    *,
    doing: str = "evaluating",
    indices: torch.Tensor | None = None,
    with_features: bool = False,
    batch_size: int = 250,
) -> Collected:
    """Every classifier's outputs over ``split`` (on ``runtime``'s device, precision and memory
    layout; ``model`` must already be there), with a progress bar. ``indices``: only those
    samples, read into memory rather than through the loader (the RDMs' few hundred)."""
    if indices is not None:
        samples = eed_data.read_split(config, split, indices=indices.numpy())
        normalize = eed_data.Normalizer(samples.normalization, device=runtime.device)
        batches: Any = (
            (
                normalize(samples.images[start : start + batch_size].to(runtime.device)),
                samples.labels[start : start + batch_size],
            )
            for start in range(0, len(indices), batch_size)
        )
        total = -(-len(indices) // batch_size)
    else:
        batches = eed_data.make_loader(config, split, train=False, device=runtime.device)
        batches.warmup(console=console)  # FFCV compiles its pipeline first (~10 s): say so, not a blank screen
        total = len(batches)
    with progress_bar(console) as progress:
        return collect_outputs(
            model,
            tracked(batches, progress, f"{doing} on {split}", total),
            runtime.device,
            with_features=with_features,
            autocast=runtime.autocast,
            channels_last=runtime.channels_last,
        )


def on_runtime(model: MultiExitNet, runtime: Runtime) -> MultiExitNet:
    """``model`` on the runtime's device, in its memory layout."""
    model = model.to(runtime.device)
    return model.to(memory_format=torch.channels_last) if runtime.channels_last else model


def in_float32(runtime: Runtime) -> Runtime:
    """``runtime`` without autocast (exact float32 outputs)."""
    return dataclasses.replace(runtime, autocast_dtype=None)


# --------------------------------------------------------------------------- the stage's run


def log_stage_run(
    stage: str,
    tracking_uri: str,
    config: Config,
    source: ResolvedSource,
    split: str,
    metrics: Mapping[str, Any],
    files: Sequence[Path],
    out_dir: Path,
    *,
    started: float,
    params: Mapping[str, Any],
) -> str:
    """A stage's results as a run named by what it did (``evaluate test best.pt``), nested under
    the training run that made the checkpoint (stand-alone in the configured experiment when
    that run is unknown), lasting from ``started`` (``time.time()``) to now: its ``params``, the
    metrics at step 0 that the training run does not already hold with the same value, and
    every file, kept at its path relative to ``out_dir``."""
    epoch = source.checkpoint.epoch
    name = f"{stage} {split} {source.file_name or 'checkpoint'}"
    stage_run = tracking.MlflowLogger.for_stage(
        tracking_uri,
        name,
        stage=stage,
        parent_run_id=source.run_id,
        experiment=config.tracking.experiment,
        tags={
            "split": split,
            "source": source.description,
            tracking.NOTE_TAG: f"{stage} of {source.description} (epoch {epoch}) on the {split} split",
        },
        start_time=started,
    )
    with tracking.logged_run(stage_run):
        stage_run.log_params(
            {
                "split": split,
                "checkpoint": source.file_name,
                "checkpoint_epoch": epoch,
                "source": source.description,
                **params,
            }
        )
        known = stage_run.parent_metrics()
        flat = tracking.flatten_metrics(metrics)
        stage_run.log_metrics({key: value for key, value in flat.items() if known.get(key) != value}, step=0)
        stage_run.log_artifacts(files, out_dir)
    return stage_run.run_id


def stage_params(config: Config, keys: Sequence[str]) -> dict[str, str]:
    """The flattened ``config`` keys a stage reads (``eval.thresholds`` ...), as run params."""
    flat = flatten(config)
    return {key: value for key, value in flat.items() if any(key == k or key.startswith(k + ".") for k in keys)}
