"""Read a prepared split fully into memory, straight from its ``.beton`` file.

The tensor backend, evaluation and the RDM code use this, so every consumer sees the
pixels ``eed prepare`` wrote: the ``.beton`` files are the one source of truth. The file's
header and per-sample metadata are read by :mod:`eed.data.beton` (without importing FFCV);
raw images are then copied out of a memory map (no JIT, ~0.3 s for CIFAR's 50,000 images);
JPEG images are decoded with OpenCV and center-cropped like the evaluation pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eed.config import Config
from eed.data.beton import BetonIndex, read_index
from eed.data.catalog import IMAGENET_EVAL_CROP_RATIO, IMAGENET_EVAL_RESOLUTION, Normalization
from eed.data.manifest import RERUN_HINT, Manifest, load_manifest, read_manifest
from eed.errors import DataError

_RAW_MODE = 1  # FFCV's RGBImageField mode ids: 0 = jpg, 1 = raw


@dataclass
class SplitTensors:
    """A whole split (or the requested samples of it) in memory."""

    images: torch.Tensor  # uint8, N x 3 x H x W (contiguous), RGB
    labels: torch.Tensor  # int64, N
    class_names: list[str]
    normalization: Normalization  # what the loaders apply to these images

    def __len__(self) -> int:
        return len(self.labels)


def resolve_manifest(source: Config | str | Path) -> Manifest:
    """A config: its prepared data, checked against the params. A path: the prepared
    dataset folder (``<prepared_dir>/<dataset>``) as it is."""
    if isinstance(source, Config):
        return load_manifest(source)
    manifest = read_manifest(source)
    if manifest is None:
        raise DataError(f"{source} holds no prepared data (no manifest.json); {RERUN_HINT}")
    return manifest


def read_split(
    source: Config | str | Path,
    split: str,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    resolution: int | None = None,
) -> SplitTensors:
    """Images and labels of ``split`` (``indices``: only these samples, in this order).

    JPEG datasets of mixed image sizes are center-cropped (ratio 224/256) and resized to
    ``resolution`` (default 224), as the evaluation pipeline does.
    """
    manifest = resolve_manifest(source)
    path = manifest.split_path(split)
    index = read_index(path)
    image_meta = index.column("image")
    labels = np.array(index.column("label"), dtype=np.int64)
    chosen = np.arange(len(labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= len(labels)):
        raise IndexError(f"indices out of range for the {len(labels)} samples of {path}")
    if indices is None:
        manifest.check_labels(split, labels)  # against the manifest's classes and counts
    labels = labels[chosen]
    if len(labels) and (labels.min() < 0 or labels.max() >= manifest.num_classes):
        raise DataError(f"{path}: labels outside 0..{manifest.num_classes - 1}; the file is corrupt; {RERUN_HINT}")

    image_meta = image_meta[chosen]
    file = np.memmap(path, dtype=np.uint8, mode="r")
    all_raw = bool(np.all(image_meta["mode"] == _RAW_MODE))
    same_size = len(np.unique(image_meta["height"])) <= 1 and len(np.unique(image_meta["width"])) <= 1
    if all_raw and same_size and resolution is None:
        pixels = _copy_raw(file, image_meta)
    else:
        pixels = _decode_resized(file, image_meta, index, resolution or IMAGENET_EVAL_RESOLUTION)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    normalization = Normalization.from_lists(manifest.normalization)
    return SplitTensors(images, torch.from_numpy(labels), list(manifest.class_names), normalization)


def read_labels(path: str | Path) -> np.ndarray:
    """The int64 labels of a ``.beton`` file, in file order (reads only the metadata)."""
    return np.array(read_index(path).column("label"), dtype=np.int64)


def _copy_raw(file: np.memmap, image_meta: np.ndarray) -> np.ndarray:
    count = len(image_meta)
    height, width = (int(image_meta["height"][0]), int(image_meta["width"][0])) if count else (0, 0)
    size = height * width * 3
    pixels = np.empty((count, height, width, 3), dtype=np.uint8)
    flat = pixels.reshape(count, size)
    for row, pointer in enumerate(image_meta["data_ptr"].tolist()):
        flat[row] = file[pointer : pointer + size]
    return pixels


def _decode_resized(file: np.memmap, image_meta: np.ndarray, index: BetonIndex, resolution: int) -> np.ndarray:
    """Decode (JPEG) or view (raw) each image, center-crop and resize it to a square."""
    import cv2

    # A sample's byte count is in FFCV's allocation table, keyed by its pointer.
    table = index.alloc_table
    order = np.argsort(table["ptr"])
    pointers, sizes = table["ptr"][order], table["size"][order]
    pixels = np.empty((len(image_meta), resolution, resolution, 3), dtype=np.uint8)
    for row, entry in enumerate(image_meta):
        pointer = int(entry["data_ptr"])
        size = int(sizes[np.searchsorted(pointers, pointer)])
        data = np.asarray(file[pointer : pointer + size])
        height, width = int(entry["height"]), int(entry["width"])
        if entry["mode"] == _RAW_MODE:
            image = data[: height * width * 3].reshape(height, width, 3)
        else:
            decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if decoded is None:
                raise DataError(f"{index.file_name}: sample {row} is not a decodable JPEG; {RERUN_HINT}")
            image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
        side = max(1, int(min(height, width) * IMAGENET_EVAL_CROP_RATIO))
        top, left = (height - side) // 2, (width - side) // 2
        crop = image[top : top + side, left : left + side]
        pixels[row] = cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return pixels
