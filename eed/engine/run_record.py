"""What a training run records about itself in the store, besides its metrics: its description,
the datasets it read, what its final test metrics mean, and what its logged model is."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from eed import data as eed_data
from eed import tracking
from eed.config import Config, require_resolved
from eed.models.multi_exit import MultiExitNet

# What the final test metrics are, logged with the run as tags (``eed.meaning.<metric>``) and
# shown by `eed compare`: the paper's number and eed's recommended one are not the same thing.
METRIC_MEANINGS = {
    "test/acc_*": "the weights of best.pt: selected on validation (best main accuracy), or the last epoch "
    "when there is no validation split",
    "test/max_acc_*": "max over epochs, as in the paper; selected on test, optimistic",
    "test/epoch_acc_*": "test accuracy after each epoch (reported, never used to select)",
}

# Tags a training run with the last.pt it writes: a run killed before that file existed is
# found by it and continued, rather than left RUNNING beside a new one.
CHECKPOINT_TAG = "eed.checkpoint"


def meaning_tags(config: Config, selected_epoch: int) -> dict[str, str]:
    """:data:`METRIC_MEANINGS` as tags, naming the epoch best.pt holds."""
    selected_on = (
        f"validation, epoch {selected_epoch}"
        if require_resolved(config.data.val_size, "data.val_size") > 0
        else "last epoch"
    )
    return {
        f"eed.meaning.{name.removesuffix('_*')}": meaning.replace("best.pt", f"best.pt ({selected_on})")
        for name, meaning in METRIC_MEANINGS.items()
    }


def orphan_run(tracking_uri: str, last_path: Path) -> str | None:
    """The RUNNING training run that was to write ``last_path`` (none exists yet), if any."""
    runs = tracking.find_runs(tracking_uri, tags={CHECKPOINT_TAG: str(last_path.resolve())})
    running = [run.run_id for run in runs if run.status == "RUNNING"]
    return running[0] if running else None


def run_description(config: Config, objective_line: str) -> str:
    """The run's one-paragraph description (MLflow's Description field)."""
    return (
        f"{objective_line}. {config.model.arch} width {config.model.width} on {config.data.dataset}, "
        f"{config.train.epochs} epochs ({config.train.schedule} schedule), batch {config.train.batch_size}, "
        f"seed {config.seed}, {config.scale} scale, {config.reference} reference."
    )


def dataset_records(config: Config, manifest: Any) -> dict[str, tracking.DatasetRecord]:
    """The prepared splits a run reads, for MLflow's Datasets: digests from the manifest's
    sha256 (the training set's also from the subset it draws, which changes what is read)."""
    # The images all processes together read (a loader's count is its process's share under DDP).
    used = {
        "train": min(
            config.data.train_subset or manifest.splits["train"].num_samples, manifest.splits["train"].num_samples
        )
    }
    contexts = {"train": "training", "val": "validation", "test": "test"}
    records = {}
    for split, context in contexts.items():
        record = manifest.splits.get(split)
        if record is None or (split == "val" and config.data.val_size == 0):
            continue
        digest = record.sha256.removeprefix("sha256:") or f"{record.bytes:x}"
        count = used.get(split, record.num_samples)
        if count != record.num_samples:  # a stratified subset, seeded by data.split_seed
            digest = hashlib.sha256(f"{digest}:{count}:{config.data.split_seed}".encode()).hexdigest()
        path = (manifest.directory / record.file).resolve() if manifest.directory else Path(record.file)
        records[split] = tracking.DatasetRecord(
            name=f"{config.data.dataset}-{split}",
            digest=digest[:32],
            source=path.as_uri(),
            context=context,
            profile={
                "num_samples": count,
                "num_samples_in_file": record.num_samples,
                "num_classes": manifest.num_classes,
                "sha256": record.sha256,
                "bytes": record.bytes,
            },
        )
    return records


def example_images(config: Config, count: int = 2) -> Any:
    """The first ``count`` test images, normalized as the loaders do: the model's input example."""
    samples = eed_data.read_split(config, "test", indices=list(range(count)))
    return eed_data.Normalizer(samples.normalization)(samples.images).numpy()


def model_metadata(config: Config, manifest: Any, model: MultiExitNet, epoch: int) -> dict[str, Any]:
    """What a user of the logged model needs besides the weights: what its input is, what its
    output axes are, and which weights these are."""
    return {
        "checkpoint": "best.pt",
        "epoch": epoch,
        "selected_on": "val" if require_resolved(config.data.val_size, "data.val_size") > 0 else "last epoch",
        "input": "float32 N x 3 x H x W, (pixel / 255 - mean) / std per channel",
        "normalization": dict(manifest.normalization),
        "output": "float32 N x classifiers x classes: logits, classifiers in network order",
        "classifiers": model.classifier_names(),
        "class_names": list(manifest.class_names),
        "arch": config.model.arch,
        "width": config.model.width,
        "method": config.method,
        "dataset": config.data.dataset,
    }
