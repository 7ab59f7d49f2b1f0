"""The data layer: raw datasets -> FFCV ``.beton`` files (``eed prepare``) -> loaders.

Public API (import from ``eed.data``):

* :func:`prepare` (``config -> PrepareResult``): write the train / val / test ``.beton``
  files and their manifest into ``<data.prepared_dir>/<dataset>/``; "up to date" when
  nothing changed.
* :func:`make_loader` (``config, split, *, train, device, distributed, epoch``): an
  :class:`EpochLoader` yielding normalized ``(images, labels)`` batches (FFCV or in-memory
  tensor backend).
* :func:`load_manifest` (``config -> Manifest``): the prepared data's description
  (``num_classes``, ``class_names``, split sizes), checked against the params.
* :func:`read_split` (``config | folder, split -> SplitTensors``): a split as uint8 tensors
  and labels, in memory.
* :data:`DataError`: the one exception for missing, corrupt or mismatched data.

Submodules, in the order data flows: ``catalog`` (per-dataset constants), ``sources``
(read and check raw files), ``splits`` (stratified selection), ``preparation``, ``manifest``,
``memory`` (read .beton into memory), ``augment`` (vectorised torch ops), ``loaders``.

Heavy imports (FFCV ~5 s, torchvision ~3 s) happen only when a function needs them, so
``from eed.data import DataError`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eed.errors import DataError

# name -> submodule defining it; loaded on first access (PEP 562).
_EXPORTS = {
    "prepare": "preparation",
    "PrepareResult": "preparation",
    "make_loader": "loaders",
    "EpochLoader": "loaders",
    "FFCVEpochLoader": "loaders",
    "TensorEpochLoader": "loaders",
    "Manifest": "manifest",
    "load_manifest": "manifest",
    "read_manifest": "manifest",
    "dataset_dir": "manifest",
    "num_classes": "manifest",
    "class_names": "manifest",
    "read_split": "memory",
    "read_labels": "memory",
    "SplitTensors": "memory",
    "Normalization": "catalog",
    "SPLITS": "catalog",
    "Normalizer": "augment",
    "RawDataset": "sources",
    "load_raw_dataset": "sources",
    "read_cifar": "sources",
    "read_image_folders": "sources",
    "make_synthetic": "sources",
    "stratified_sample": "splits",
}

__all__ = ["DataError", *_EXPORTS]

if TYPE_CHECKING:
    from eed.data.augment import Normalizer
    from eed.data.catalog import SPLITS, Normalization
    from eed.data.loaders import EpochLoader, FFCVEpochLoader, TensorEpochLoader, make_loader
    from eed.data.manifest import Manifest, class_names, dataset_dir, load_manifest, num_classes, read_manifest
    from eed.data.memory import SplitTensors, read_labels, read_split
    from eed.data.preparation import PrepareResult, prepare
    from eed.data.sources import RawDataset, load_raw_dataset, make_synthetic, read_cifar, read_image_folders
    from eed.data.splits import stratified_sample


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eed.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"eed.data.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
