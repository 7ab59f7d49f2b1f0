"""One checkpoint dict (as torchvision's references do), written atomically, loaded safely;
when a run resumes from one; and what ``eed evaluate``/``eed rdm`` read a network from.

Keys: ``format`` ("eed-checkpoint"), ``version``, ``arch``, ``num_classes``, ``width``,
``exits`` (False for the baseline), ``stem_relu`` (False: the stem without its ReLU; absent in
checkpoints written before the option, which had it), ``class_names``, ``config`` (the resolved config as a
plain dict), ``epoch`` (epochs completed), ``step_in_epoch``, ``model``, ``optimizer``,
``scheduler``, ``rng`` (Python, numpy and torch generator states), ``metrics`` (last
epoch's), ``best_metric`` and ``best_epoch``, ``test_max`` (each output's best test accuracy
so far and its epoch), ``history`` (every finished epoch's metrics), ``phase`` (:data:`PHASES`),
``partial_epoch`` (when interrupted mid-epoch: the metrics of the steps done) and ``run_id``
(the tracking run that made it).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from eed import tracking
from eed.config import Config, training_settings
from eed.errors import CheckpointError
from eed.models.multi_exit import MultiExitNet
from eed.models.registry import create_model

FORMAT = "eed-checkpoint"
# 2: the tracking run id is stored under ``run_id``.
VERSION = 2


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
    except RuntimeError as error:  # torch's writer reports a full disk as "enforce fail at inline_container.cc"
        Path(tmp).unlink(missing_ok=True)
        if "inline_container" not in str(error) and "PytorchStreamWriter" not in str(error):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC if free < 2**20 else errno.EIO,
                      f"Could not write the checkpoint ({free / 2**20:,.0f} MiB free; is the disk full?)",
                      str(path)) from error
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
        import re

        # torch's weights-only unpickler advises loading with weights_only=False, which runs any
        # code the file holds: advice never to pass on. Say what it refused instead.
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
        foreign = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        refused = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        if foreign:
            raise CheckpointError(f"{path} is not an eed checkpoint: it holds a {foreign.group(1).rstrip('.')} "
                                  "object, and eed reads only tensors, numbers, strings and containers of them "
                                  "(a file written by another tool?)") from None
        if "weights_only" in text:
            reason = refused.group(1).strip() if refused else type(error).__name__
            raise CheckpointError(f"{path} is not a readable eed checkpoint (damaged, or not a torch file: "
                                  f"{reason})") from None
        raise CheckpointError(f"{path} is not a readable eed checkpoint ({type(error).__name__}: "
                              f"{text.splitlines()[0] if text else ''})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an eed checkpoint (no 'format: {FORMAT}' entry)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')} is not supported "
                              f"(this eed reads version {VERSION})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], *, arch: str | None = None,
                          num_classes: int | None = None) -> MultiExitNet:
    """Rebuild the network a checkpoint holds and load its weights.

    ``arch``/``num_classes``, when given, must match: a checkpoint of another architecture or
    class count is a clear error rather than a shape mismatch deep inside ``load_state_dict``.
    """
    # What it is for first (another network is the clearer message), then whether it is whole.
    if arch is not None and "arch" in checkpoint and checkpoint["arch"] != arch:
        raise CheckpointError(f"checkpoint is a {checkpoint['arch']!r} model, expected {arch!r}")
    if num_classes is not None and "num_classes" in checkpoint and checkpoint["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint predicts {checkpoint['num_classes']} classes, "
                              f"but the data has {num_classes}")
    missing = [key for key in ("arch", "num_classes", "width", "exits", "model") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}: not a complete eed checkpoint "
                              "(written by another tool, or by hand?)")
    # The weights are overwritten next, so they are not initialised (init="pytorch").
    model = create_model(checkpoint["arch"], checkpoint["num_classes"], checkpoint["width"],
                         exits=checkpoint["exits"], stem_relu=checkpoint.get("stem_relu", True), init="pytorch")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint weights do not fit {checkpoint['arch']}: "
                              f"{str(error).splitlines()[0]}") from None
    return model


def check_classes(checkpoint: dict[str, Any], class_names: Sequence[str], dataset: str) -> None:
    """A checkpoint trained on other classes must not be scored against these labels."""
    trained = list(checkpoint.get("class_names") or [])
    # (A different class count alone is caught by model_from_checkpoint's num_classes check.)
    if trained and trained != list(class_names):
        differing = next((i for i, (a, b) in enumerate(zip(trained, class_names)) if a != b), None)
        detail = (f"class {differing} is {trained[differing]!r} in the checkpoint, {class_names[differing]!r} here"
                  if differing is not None else f"{len(trained)} classes in the checkpoint, {len(class_names)} here")
        raise CheckpointError(f"the checkpoint was trained on other classes than dataset {dataset!r} ({detail})")


# --------------------------------------------------------------------------- resuming


# Where a run is, recorded in last.pt: "epochs" (training), "final" (every epoch done, the final
# test, artifacts and model not yet), "done". A re-run continues from the phase it was in.
PHASES = ("epochs", "final", "done")


def checkpoint_phase(checkpoint: dict[str, Any], epochs: int) -> str:
    """The checkpoint's phase; a checkpoint written before phases were recorded is "done" once
    it holds every epoch."""
    if "phase" in checkpoint:
        return checkpoint["phase"]
    finished = checkpoint["epoch"] >= epochs and checkpoint.get("step_in_epoch", 0) == 0
    return "done" if finished else "epochs"


def resume_checkpoint(resume: str | Path | bool, last_path: Path, config: Config) -> dict[str, Any] | None:
    """What a training run continues from. ``resume``: True/"auto" continues ``last_path``
    when it holds an unfinished run; a path continues that checkpoint; False/"never" starts
    fresh. Only the keys that shape the training trajectory must match
    (:func:`eed.config.training_settings`): evaluation, tracking and output settings may
    change between the interrupted run and the one that resumes it. An unfinished run with
    other training settings is refused rather than overwritten."""
    if resume is False or resume == "never":
        return None
    if resume not in (True, "auto"):
        return load_checkpoint(resume)
    if not last_path.is_file():
        return None
    checkpoint = load_checkpoint(last_path)
    unfinished = checkpoint_phase(checkpoint, config.train.epochs) != "done"
    if not unfinished and resume == "auto":
        return None  # a finished run: this one starts afresh
    before, now = training_settings(checkpoint["config"]), training_settings(config)
    differing = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if differing:
        changes = ", ".join(f"{key}: {before.get(key)} -> {now.get(key)}" for key in differing)
        raise CheckpointError(f"{last_path} holds an unfinished run with other training settings ({changes}); "
                              f"re-run with its settings to resume it, or start over with `eed train --resume never` "
                              f"(or delete {last_path.name})")
    return checkpoint if unfinished else None


# --------------------------------------------------------------------------- sources to evaluate


@dataclass
class ResolvedSource:
    checkpoint: dict[str, Any]
    run_id: str | None      # the tracking run that made the checkpoint, if known
    description: str        # for messages: the file, or "run <id> (checkpoints/best.pt)"
    file_name: str = ""     # the checkpoint's file name (best.pt, last.pt, ...)


def resolve_source(source: str, tracking_uri: str | None, which: str = "best") -> ResolvedSource:
    """A checkpoint file, or the id of a tracked run whose ``checkpoints/{which}.pt`` (else
    the other of best/last) is downloaded. Unknown run ids are a :class:`SourceError`."""
    path = Path(source)
    looks_like_path = path.suffix == ".pt" or "/" in source or "\\" in source
    if path.is_file() or (looks_like_path and not tracking.looks_like_run_id(source)) or tracking_uri is None:
        checkpoint = load_checkpoint(path)  # CheckpointError when missing or not ours
        return ResolvedSource(checkpoint, checkpoint.get("run_id"), str(path), path.name)
    with tracking.downloaded_checkpoint(tracking_uri, source, which) as (local, name):
        checkpoint = load_checkpoint(local)
    return ResolvedSource(checkpoint, source, f"run {source} (checkpoints/{name})", name)
