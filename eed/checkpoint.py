"""One checkpoint dict (as torchvision's references do), written atomically, loaded safely.

Keys: ``format`` ("eed-checkpoint"), ``version``, ``arch``, ``num_classes``, ``width``,
``exits`` (False for the baseline), ``class_names``, ``config`` (the resolved config as a
plain dict), ``epoch`` (epochs completed), ``model``, ``optimizer``, ``scheduler``,
``rng`` (Python, numpy and torch generator states), ``metrics`` (last epoch's),
``best_metric`` and ``mlflow_run_id``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "eed-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """The file is missing, not an eed checkpoint, or does not fit the requested model."""


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format": FORMAT, "version": VERSION, **checkpoint}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` and check that it is an eed checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch's unpickler raises many types on garbage or truncation
        raise CheckpointError(f"{path} is not a readable eed checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an eed checkpoint (no 'format: {FORMAT}' entry)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')} is not supported "
                              f"(this eed reads version {VERSION})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], *, arch: str | None = None,
                          num_classes: int | None = None):
    """Rebuild the network a checkpoint holds and load its weights.

    ``arch``/``num_classes``, when given, must match: a checkpoint of another architecture or
    class count is a clear error rather than a shape mismatch deep inside ``load_state_dict``.
    """
    from eed.models.registry import create_model

    if arch is not None and checkpoint["arch"] != arch:
        raise CheckpointError(f"checkpoint is a {checkpoint['arch']!r} model, expected {arch!r}")
    if num_classes is not None and checkpoint["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint predicts {checkpoint['num_classes']} classes, "
                              f"but the data has {num_classes}")
    model = create_model(checkpoint["arch"], checkpoint["num_classes"], checkpoint["width"],
                         exits=checkpoint["exits"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint weights do not fit {checkpoint['arch']}: "
                              f"{str(error).splitlines()[0]}") from None
    return model
