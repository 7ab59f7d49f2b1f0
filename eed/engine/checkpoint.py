"""The one checkpoint type: :class:`Checkpoint` alone reads and writes the file.

A checkpoint holds what rebuilds the network (:class:`NetworkSpec`), its weights, the
resolved config it was trained with, where training was (:class:`TrainState`: epochs done,
the run id, the history, ...) and, for resuming, the optimizer, scheduler and generator
states (:class:`ResumeState`; none in a :meth:`~Checkpoint.deployable` one). It is written
atomically and read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, never code.

Also here: when a training run resumes from a checkpoint (:func:`resume_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eed.config import Config, require_resolved, training_settings
from eed.errors import CheckpointError
from eed.models.initialization import InitScheme
from eed.models.multi_exit import MultiExitNet
from eed.models.registry import create_model

FORMAT = "eed-checkpoint"
# 3: typed sections (network, weights, config, state, resume). Version 2 files (one flat dict)
# are read and upgraded in memory (:func:`_upgrade_v2`).
VERSION = 3

# Where a run is, recorded in last.pt: "epochs" (training), "final" (every epoch done, the final
# test, artifacts and model not yet), "done". A re-run continues from the phase it was in.
PHASES = ("epochs", "final", "done")

History = dict[str, list[tuple[int, float]]]


@dataclass(frozen=True)
class NetworkSpec:
    """What rebuilds the network: a registered architecture at a width, with or without exits."""

    arch: str
    num_classes: int
    width: int
    exits: bool
    stem_relu: bool = True  # False: the stem without its ReLU (reference: official)
    class_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Config, class_names: Sequence[str], exits: bool) -> NetworkSpec:
        """The network of a resolved ``config`` (:func:`eed.models.from_config.resolve_architecture`)."""
        return cls(
            config.model.arch,
            len(class_names),
            require_resolved(config.model.width, "model.width"),
            exits,
            bool(config.model.stem_relu),
            tuple(class_names),
        )

    def build(self, init: InitScheme = "pytorch") -> MultiExitNet:
        """The network, initialised by ``init`` (default: PyTorch's, as its weights are loaded next)."""
        return create_model(
            self.arch, self.num_classes, self.width, exits=self.exits, stem_relu=self.stem_relu, init=init
        )


@dataclass
class TrainState:
    """Where a training run is; the trainer updates it and every checkpoint records it."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done of epoch ``epoch + 1`` (stopped mid-epoch), else 0
    phase: str = "epochs"  # :data:`PHASES`
    best_metric: float = -1.0  # the selected epoch's validation accuracy of the main output
    best_epoch: int = 0
    test_max: dict[str, list[float]] = field(default_factory=dict)  # output -> [max test accuracy, its epoch]
    history: History = field(default_factory=dict)  # every finished epoch's metrics: name -> [(epoch, value)]
    partial_epoch: dict[str, Any] | None = None  # the metrics of the steps done of an interrupted epoch
    run_id: str | None = None  # the tracking run that made it

    def metrics_of(self, epoch: int) -> dict[str, float]:
        return {name: value for name, points in self.history.items() for step, value in points if step == epoch}

    def to_checkpoint(
        self, network: NetworkSpec, model: torch.nn.Module, config: Config, resume: ResumeState | None
    ) -> Checkpoint:
        """A snapshot of this state (a copy: the state goes on changing) with ``model``'s weights (its
        tensors: save the checkpoint before the next step changes them)."""
        return Checkpoint(network, model.state_dict(), config.model_dump(), dataclasses.replace(self), resume)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TrainState:
        return dataclasses.replace(checkpoint.state)


@dataclass
class ResumeState:
    """What resuming needs besides the weights: the optimizer's, scheduler's and generators' states."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


@dataclass
class Checkpoint:
    network: NetworkSpec
    weights: dict[str, Tensor]
    config: dict[str, Any]  # the resolved config, as ``Config.model_dump()``
    state: TrainState
    resume: ResumeState | None = None  # None in a deployable checkpoint

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def run_id(self) -> str | None:
        return self.state.run_id

    def deployable(self) -> Checkpoint:
        """The network and where it came from (epoch, run), without what only resuming needs:
        the optimizer's state is as large as the weights."""
        state = TrainState(
            epoch=self.state.epoch,
            phase="done",
            best_metric=self.state.best_metric,
            best_epoch=self.state.best_epoch,
            run_id=self.state.run_id,
        )
        return Checkpoint(self.network, self.weights, self.config, state, None)

    # ------------------------------------------------------------------ the network

    def model(self, *, arch: str | None = None, num_classes: int | None = None) -> MultiExitNet:
        """The network with these weights. ``arch``/``num_classes``, when given, must match: a
        checkpoint of another network is a clear error, not a shape mismatch in ``load_state_dict``."""
        if arch is not None and self.network.arch != arch:
            raise CheckpointError(f"checkpoint is a {self.network.arch!r} model, expected {arch!r}")
        if num_classes is not None and self.network.num_classes != num_classes:
            raise CheckpointError(
                f"checkpoint predicts {self.network.num_classes} classes, but the data has {num_classes}"
            )
        model = self.network.build()
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint weights do not fit {self.network.arch}: {str(error).splitlines()[0]}"
            ) from None
        return model

    def check_classes(self, class_names: Sequence[str], dataset: str) -> None:
        """A checkpoint trained on other classes must not be scored against these labels."""
        trained = list(self.network.class_names)
        # (A different class count alone is caught by model()'s num_classes check.)
        if trained and trained != list(class_names):
            differing = next((i for i, (a, b) in enumerate(zip(trained, class_names)) if a != b), None)
            detail = (
                f"class {differing} is {trained[differing]!r} in the checkpoint, {class_names[differing]!r} here"
                if differing is not None
                else f"{len(trained)} classes in the checkpoint, {len(class_names)} here"
            )
            raise CheckpointError(f"the checkpoint was trained on other classes than dataset {dataset!r} ({detail})")

    # ------------------------------------------------------------------ the file

    def save(self, path: str | Path) -> Path:
        """Write to a temporary file in the same folder, then rename: never a half-written file."""
        return _write_atomically(self._to_file(), Path(path))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read an eed checkpoint safely; a :class:`CheckpointError` of one line otherwise."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        contents = _read_weights_only(path, map_location)
        if not isinstance(contents, dict) or contents.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an eed checkpoint (no 'format: {FORMAT}' entry)")
        if contents.get("version") == 2:
            contents = _upgrade_v2(contents, path)
        elif contents.get("version") != VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {contents.get('version')} is not supported (this eed "
                f"reads versions 2 and {VERSION}); use the eed release that wrote it, or retrain"
            )
        return cls._from_file(contents, path)

    def _to_file(self) -> dict[str, Any]:
        network = dataclasses.asdict(self.network)
        network["class_names"] = list(self.network.class_names)
        return {
            "format": FORMAT,
            "version": VERSION,
            "network": network,
            "weights": self.weights,
            "config": self.config,
            "state": dataclasses.asdict(self.state),
            "resume": dataclasses.asdict(self.resume) if self.resume is not None else None,
        }

    @classmethod
    def _from_file(cls, contents: dict[str, Any], path: Path) -> Checkpoint:
        try:
            network = NetworkSpec(
                **{**contents["network"], "class_names": tuple(contents["network"].get("class_names") or ())}
            )
            state = TrainState(**contents["state"])
            # (epoch, value) pairs; a malformed point is a ValueError, reported below
            state.history = {
                name: [(epoch, value) for epoch, value in points] for name, points in state.history.items()
            }
            resume = ResumeState(**contents["resume"]) if contents.get("resume") is not None else None
            return cls(network, contents["weights"], contents.get("config") or {}, state, resume)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{path} is not a complete eed checkpoint ({type(error).__name__}: {error}; "
                "written by another tool, or by hand?)"
            ) from None


def _write_atomically(contents: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(contents, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (RuntimeError, OSError) as error:
        # torch's writer reports a full disk as "enforce fail at inline_container.cc" (RuntimeError)
        # or as the OS's "No space left on device" without the path: say which file, and the space.
        Path(tmp).unlink(missing_ok=True)
        torch_writer = "inline_container" in str(error) or "PytorchStreamWriter" in str(error)
        if not (torch_writer or getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)):
            raise
        free = shutil.disk_usage(path.parent).free
        code = (
            error.errno if isinstance(error, OSError) and error.errno else (errno.ENOSPC if free < 2**20 else errno.EIO)
        )
        raise OSError(
            code, f"Could not write the checkpoint ({free / 2**20:,.0f} MiB free; is the disk full?)", str(path)
        ) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_weights_only(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch's unpickler raises many types on garbage or truncation
        # torch's weights-only unpickler advises loading with weights_only=False, which runs any
        # code the file holds: advice never to pass on. Say what it refused instead.
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
        foreign = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        refused = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        if foreign:
            raise CheckpointError(
                f"{path} is not an eed checkpoint: it holds a {foreign.group(1).rstrip('.')} "
                "object, and eed reads only tensors, numbers, strings and containers of them "
                "(a file written by another tool?)"
            ) from None
        if "weights_only" in text:
            reason = refused.group(1).strip() if refused else type(error).__name__
            raise CheckpointError(
                f"{path} is not a readable eed checkpoint (damaged, or not a torch file: {reason})"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable eed checkpoint ({type(error).__name__}: {text.splitlines()[0] if text else ''})"
        ) from None


def _upgrade_v2(old: dict[str, Any], path: Path) -> dict[str, Any]:
    """A version-2 checkpoint (one flat dict) in version 3's sections."""
    missing = [key for key in ("arch", "num_classes", "width", "exits", "model") if key not in old]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: not a complete eed checkpoint (written by another tool, or by hand?)"
        )
    epoch, step = old.get("epoch", 0), old.get("step_in_epoch", 0)
    epochs = ((old.get("config") or {}).get("train") or {}).get("epochs") or epoch
    phase = old.get("phase") or ("done" if epoch >= epochs and step == 0 else "epochs")
    state = {
        "epoch": epoch,
        "step": step,
        "phase": phase,
        "best_metric": old.get("best_metric", -1.0),
        "best_epoch": old.get("best_epoch", 0),
        "test_max": old.get("test_max", {}),
        "history": old.get("history", {}),
        "partial_epoch": old.get("partial_epoch"),
        "run_id": old.get("run_id"),
    }
    resume = (
        {"optimizer": old["optimizer"], "scheduler": old["scheduler"], "rng": old["rng"]}
        if all(key in old for key in ("optimizer", "scheduler", "rng"))
        else None
    )
    network = {
        "arch": old["arch"],
        "num_classes": old["num_classes"],
        "width": old["width"],
        "exits": old["exits"],
        "stem_relu": old.get("stem_relu", True),
        "class_names": old.get("class_names") or [],
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "network": network,
        "weights": old["model"],
        "config": old.get("config") or {},
        "state": state,
        "resume": resume,
    }


# --------------------------------------------------------------------------- resuming


def resume_checkpoint(resume: str | Path | bool, last_path: Path, config: Config) -> Checkpoint | None:
    """What a training run continues from. ``resume``: True/"auto" continues ``last_path``
    when it holds an unfinished run; a path continues that checkpoint; False/"never" starts
    fresh. Only the keys that shape the training trajectory must match
    (:func:`eed.config.training_settings`): evaluation, tracking and output settings may
    change between the interrupted run and the one that resumes it. An unfinished run with
    other training settings is refused rather than overwritten."""
    if resume is False or resume == "never":
        return None
    if resume not in (True, "auto"):
        return Checkpoint.load(resume)
    if not last_path.is_file():
        return None
    checkpoint = Checkpoint.load(last_path)
    unfinished = checkpoint.state.phase != "done"
    if not unfinished and resume == "auto":
        return None  # a finished run: this one starts afresh
    before, now = training_settings(checkpoint.config), training_settings(config)
    differing = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if differing:
        changes = ", ".join(f"{key}: {before.get(key)} -> {now.get(key)}" for key in differing)
        raise CheckpointError(
            f"{last_path} holds an unfinished run with other training settings ({changes}); "
            f"re-run with its settings to resume it, or start over with `eed train --resume never` "
            f"(or delete {last_path.name})"
        )
    return checkpoint if unfinished else None
