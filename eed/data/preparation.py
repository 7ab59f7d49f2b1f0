"""``eed prepare`` (the DVC ``prepare`` stage): raw dataset -> FFCV ``.beton`` files for the
train / val / test splits, plus the manifest that later stages check.

Steps, in order:

1. read and check the whole source (:mod:`eed.data.sources`); a bad file fails here,
   before anything is written;
2. carve the validation split from the training images (stratified, seeded by
   ``data.split_seed``, which is kept apart from the run's ``seed``);
3. if the folder already holds a manifest equal to the one this run would write, and the
   files are intact, say "up to date" and stop;
4. otherwise delete the old manifest, write each ``.beton`` under a temporary name and
   rename it when complete, and write the new manifest last. An interrupted run leaves no
   manifest, so nothing looks finished.

Images are stored raw (uint8 pixels) for the small datasets: JPEG is lossy at 32x32. ImageNet
is stored as JPEG resized to ``data.max_resolution``. Raw datasets are written by a single
writer process, so the same input gives byte-identical files (FFCV's page order depends on
worker timing otherwise); ImageNet uses ``data.num_workers`` processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from eed.config import Config, require_resolved
from eed.data.catalog import dataset_info
from eed.data.ffcv_import import import_ffcv
from eed.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    SplitRecord,
    dataset_dir,
    default_file_mode,
    expected_params,
    file_sha256,
    image_field_settings,
    read_manifest,
    write_manifest,
)
from eed.data.sources import ImageArrays, ImageFiles, ImageSet, RawDataset, load_raw_dataset
from eed.data.splits import split_off
from eed.errors import DataError


@dataclass
class PrepareResult:
    directory: Path  # <data.prepared_dir>/<dataset>
    manifest: Manifest
    up_to_date: bool  # True when the files were already there and nothing was written
    files: dict[str, Path]  # split -> .beton path


def prepare(config: Config, *, console: Console | None = None) -> PrepareResult:
    """Write the ``.beton`` files and manifest of ``config.data`` (see the module docstring)."""
    console = console or Console(stderr=True)
    raw = load_raw_dataset(config, console)
    split_sets = _splits(raw, config)
    directory = dataset_dir(config)
    wanted = _manifest_for(raw, config, split_sets)

    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory):
        try:
            existing = read_manifest(directory)
        except DataError:
            existing = None  # unreadable: rewrite
        if existing is not None and existing.same_content(wanted) and _files_intact(existing, directory):
            console.print(f"[green]{raw.name}: {directory} is up to date[/] (same source, params and files)")
            return PrepareResult(directory, existing, True, _paths(existing, directory))

        # From here on the folder holds no manifest until every file is complete.
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        for leftover in directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        records = {}
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            for split, (images, indices) in split_sets.items():
                task = progress.add_task(f"{raw.name} {split:5s} -> {split}.beton", total=len(indices))
                records[split] = _write_beton(directory / f"{split}.beton", images, indices, config, progress, task)
        for split in ("train", "val", "test"):
            if split not in split_sets:  # e.g. val.beton of an earlier run with val_size > 0
                (directory / f"{split}.beton").unlink(missing_ok=True)
        manifest = replace(
            wanted,
            directory=directory,
            splits={
                split: replace(wanted.splits[split], bytes=size, sha256=digest)
                for split, (size, digest) in records.items()
            },
        )
        write_manifest(manifest, directory)
    _report(manifest, directory, console)
    return PrepareResult(directory, manifest, False, _paths(manifest, directory))


def _splits(raw: RawDataset, config: Config) -> dict[str, tuple[ImageSet, np.ndarray]]:
    """``{split: (image set, indices into it)}``; the val split is carved from train."""
    val_size = require_resolved(config.data.val_size, "data.val_size")
    if val_size >= len(raw.train):
        raise DataError(
            f"data.val_size = {val_size} leaves no training images: {raw.name} has "
            f"{len(raw.train)} training images; set a smaller data.val_size (0 = no validation split)"
        )
    kept, taken = split_off(raw.train.labels, val_size, config.data.split_seed)
    sets = {"train": (raw.train, kept)}
    if val_size:
        sets["val"] = (raw.train, taken)
    sets["test"] = (raw.test, np.arange(len(raw.test)))
    return sets


def _manifest_for(raw: RawDataset, config: Config, split_sets: dict[str, tuple[ImageSet, np.ndarray]]) -> Manifest:
    normalization = dataset_info(raw.name).normalization
    image_shape = list(raw.train.images.shape[1:]) if isinstance(raw.train, ImageArrays) else None
    splits = {
        split: SplitRecord(
            f"{split}.beton", len(indices), np.bincount(images.labels[indices], minlength=raw.num_classes).tolist()
        )
        for split, (images, indices) in split_sets.items()
    }
    return Manifest(
        dataset=raw.name,
        class_names=list(raw.class_names),
        params=expected_params(config),
        source={"location": raw.location, "fingerprint": raw.fingerprint},
        fields={"image": {"type": "RGBImageField", **image_field_settings(config)}, "label": {"type": "IntField"}},
        normalization={"mean": list(normalization.mean), "std": list(normalization.std)},
        image_shape=image_shape,
        splits=splits,
        split_seed=config.data.split_seed,
        val_size=require_resolved(config.data.val_size, "data.val_size"),
        eed_version=_eed_version(),
    )


def _eed_version() -> str:
    try:
        return metadata.version("eed")
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_beton(
    path: Path, images: ImageSet, indices: np.ndarray, config: Config, progress: Progress, task: TaskID
) -> tuple[int, str]:
    """Write one split to a temporary file in ``path``'s folder, then rename it to ``path``.
    Returns the file's size and sha256."""
    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader
    from ffcv.writer import DatasetWriter

    settings = image_field_settings(config)
    fields = {
        "image": RGBImageField(
            write_mode=settings["write_mode"],
            max_resolution=settings["max_resolution"],
            jpeg_quality=settings["jpeg_quality"] or 90,
        ),
        "label": IntField(),
    }
    workers = 1 if settings["write_mode"] == "raw" else config.data.workers(compute_on_cpu=False)  # JPEG encoding
    largest_image = (
        int(np.prod(images.images.shape[1:])) if isinstance(images, ImageArrays) else 3 * config.data.max_resolution**2
    )
    page_size = _page_size(largest_image)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _ffcv_progress_to(progress, task):
            DatasetWriter(tmp, fields, page_size=page_size, num_workers=workers).from_indexed_dataset(
                images, indices=indices.tolist()
            )
        if isinstance(images, ImageFiles):
            images.raise_if_unreadable()
        written = int(Reader(tmp).num_samples)
        if written != len(indices):
            raise DataError(f"{path}: FFCV wrote {written} samples instead of {len(indices)}")
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; give the umask's usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size, file_sha256(path)


def _page_size(largest_sample: int) -> int:
    """FFCV's allocation unit: a power of two from its 2 MiB minimum, holding >= 4 samples
    (small pages keep small datasets small; a sample larger than a page cannot be written)."""
    import_ffcv()
    from ffcv.writer import MIN_PAGE_SIZE

    return max(MIN_PAGE_SIZE, 1 << (4 * largest_sample - 1).bit_length())


@contextlib.contextmanager
def _ffcv_progress_to(progress: Progress, task: TaskID) -> Iterator[None]:
    """Route FFCV's writer progress (a tqdm bar) to a Rich progress task."""
    import_ffcv()
    import ffcv.writer

    class RichBar:  # the part of tqdm's interface DatasetWriter uses
        def __init__(self, total: int, **_: object):
            progress.update(task, total=total)

        def update(self, count: int) -> None:
            progress.advance(task, count)

        def close(self) -> None:
            pass

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = RichBar
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


@contextlib.contextmanager
def _exclusive_lock(directory: Path) -> Iterator[None]:
    """One `eed prepare` per output folder at a time (parallel test sessions share caches).
    The lock file lives in the temp folder, not among the outputs DVC tracks."""
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"eed-prepare-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _files_intact(manifest: Manifest, directory: Path) -> bool:
    for record in manifest.splits.values():
        path = directory / record.file
        if not path.is_file() or path.stat().st_size != record.bytes or file_sha256(path) != record.sha256:
            return False
    return True


def _paths(manifest: Manifest, directory: Path) -> dict[str, Path]:
    return {split: directory / record.file for split, record in manifest.splits.items()}


def _report(manifest: Manifest, directory: Path, console: Console) -> None:
    table = Table(title=f"{manifest.dataset}: prepared in {directory}", title_justify="left")
    for column in ("split", "images", "per class", "file", "MB"):
        table.add_column(column, justify="right" if column in ("images", "MB") else "left")
    for split, record in manifest.splits.items():
        counts = record.class_counts
        per_class = str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        table.add_row(split, f"{record.num_samples:,}", per_class, record.file, f"{record.bytes / 2**20:.1f}")
    console.print(table)
