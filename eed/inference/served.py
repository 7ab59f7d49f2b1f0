"""A trained multi-exit network as a service: raw images in, one answer per image out.

:class:`ServedModel` holds the network of a checkpoint with what serving needs besides the
weights: the class names, the normalization the network was trained with, the named
thresholds (the validation-fitted ones of ``eed evaluate``: ``budget_<gflops>``, ``max_drop``),
optional per-classifier temperatures and the anytime cost of leaving at each classifier.
:meth:`ServedModel.answer` runs early exit for real (:func:`eed.inference.early_exit.predict`):
a sample that has left is not computed further. The tracking package wraps it as a logged,
servable model (:mod:`eed.tracking.served`), built where it is loaded by :func:`load_served`.

Pure torch/numpy: nothing here knows about the tracking store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eed.data.augment import Normalizer
from eed.data.catalog import Normalization
from eed.engine.checkpoint import Checkpoint
from eed.inference.compiled import compiled_runner
from eed.inference.early_exit import eager_runner, predict
from eed.metrics.anytime import ClassifierCosts, check_rule
from eed.metrics.flops import profile_model
from eed.models.registry import get_spec

# The answer's columns, in order (``logits`` only with ``return_logits``).
COLUMNS = ("class", "class_name", "confidence", "exit", "exit_index", "gflops")


class ServedModel:
    """A checkpoint's network, ready to answer images with early exit."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        normalization: Normalization | Mapping[str, Sequence[float]],
        thresholds: Mapping[str, float] | None = None,
        temperatures: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        default: str | float | None = None,
        image_size: int | None = None,
        calibrated: bool = False,
        exit_rule: str = "confidence",
        compiled: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.model = checkpoint.model().to(device).eval()
        self.device = torch.device(device)
        k, num_classes = self.model.num_classifiers, checkpoint.network.num_classes
        self.names = self.model.classifier_names()
        self.class_names = list(
            class_names
            if class_names is not None
            else checkpoint.network.class_names or [str(i) for i in range(num_classes)]
        )
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        if not isinstance(normalization, Normalization):
            normalization = Normalization.from_lists(normalization)
        self.normalization = normalization
        self.normalizer = Normalizer(normalization, device=self.device)
        self.thresholds = {str(name): float(value) for name, value in (thresholds or {}).items()}
        if temperatures is not None:
            temperatures = [float(t) for t in temperatures]
            if len(temperatures) != k or not all(np.isfinite(t) and t > 0 for t in temperatures):
                raise ValueError(f"need {k} finite temperatures > 0 (one per classifier), got {temperatures}")
        self.temperatures = temperatures
        # The named thresholds were fitted on calibrated confidences (eval.calibrate): they hold only on those.
        self.calibrated = bool(calibrated)
        if self.calibrated and temperatures is None:
            raise ValueError("thresholds fitted on calibrated confidences need the temperatures")
        self.exit_rule = check_rule(exit_rule)  # the rule the named thresholds were fitted with
        if isinstance(default, str) and default not in self.thresholds:
            raise ValueError(f"default threshold {default!r} is not one of {sorted(self.thresholds)}")
        self.default = default
        self.image_size = int(image_size or get_spec(checkpoint.network.arch).input_size)
        self.costs = ClassifierCosts.from_profile(profile_model(self.model, self.image_size))
        # A load-time choice (not a stored setting): the same answers, compiled once here. Built once either
        # way: the eager pieces are modules too, and building them per request is not free.
        self.runner, self.compiled = eager_runner(self.model), False
        if compiled:
            try:
                self.runner, self.compiled = compiled_runner(self.model, self.image_size), True
            except Exception as error:  # no C++ compiler, an unsupported device: the same answers, eager
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                logging.getLogger(__name__).warning(
                    "compiling the network failed (%s: %s); answering eager", type(error).__name__, first
                )

    # ------------------------------------------------------------------ inputs

    def _batch(self, images: Any) -> Tensor:
        """Raw pixels N x H x W x 3 (uint8, or any numbers that are integers 0..255: JSON's) or
        float32 N x 3 x H x W (normalized) -> network input. Pixels are never cast: 0.5 is refused,
        not made 0."""
        size = self.image_size
        expected = (
            f"uint8 raw pixels of shape (N, {size}, {size}, 3) or float32 normalized images of shape "
            f"(N, 3, {size}, {size})"
        )
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy array: {expected}; got {type(images).__name__}")
        if (
            images.ndim == 4
            and images.shape[1:] == (size, size, 3)
            and images.dtype != np.uint8
            and (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating))
        ):
            images = _exact_pixels(images)
        if images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (size, size, 3):
            pixels = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
            return self.normalizer(pixels)
        if images.dtype == np.float32 and images.ndim == 4 and images.shape[1:] == (3, size, size):
            if not np.isfinite(images).all():
                raise ValueError("float32 images hold NaN or infinite values")
            return torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        raise ValueError(f"images must be {expected}; got {images.dtype} of shape {tuple(images.shape)}")

    def resolve_threshold(
        self, threshold: float | None = None, budget: str | None = None, use_max_drop: bool = False
    ) -> float:
        """An explicit threshold, a named one (``budget``), the ``max_drop`` one, else the default."""
        return self._choose(threshold, budget, use_max_drop)[1]

    def _choose(self, threshold: float | None, budget: str | None, use_max_drop: bool) -> tuple[str | None, float]:
        """(the name of the chosen threshold, None for an explicit number; its value)."""
        chosen = [
            name
            for name, given in (
                ("threshold", threshold is not None),
                ("budget", budget is not None),
                ("max_drop", bool(use_max_drop)),
            )
            if given
        ]
        if len(chosen) > 1:
            raise ValueError(f"give one of threshold, budget and max_drop, not {' and '.join(chosen)}")
        if threshold is not None:
            threshold = float(threshold)
            if not np.isfinite(threshold) or threshold < 0:
                raise ValueError(f"threshold must be a number >= 0, got {threshold}")
            return None, threshold
        name = budget if budget is not None else "max_drop" if use_max_drop else self.default
        if name is None:
            raise ValueError(
                f"no threshold given and no default: pass threshold, or budget (one of {sorted(self.thresholds)})"
            )
        if not isinstance(name, str):
            return None, float(name)
        if name not in self.thresholds:
            raise ValueError(f"no threshold named {name!r}; known: {sorted(self.thresholds)}")
        return name, self.thresholds[name]

    # ------------------------------------------------------------------ answers

    def answer(
        self,
        images: np.ndarray,
        threshold: float | None = None,
        budget: str | None = None,
        use_max_drop: bool = False,
        calibrated: bool | None = None,
        return_logits: bool = False,
        exit_rule: str | None = None,
    ) -> dict[str, list]:
        """One answer per image, as columns (:data:`COLUMNS`, plus ``logits`` with ``return_logits``:
        per sample, the raw logits of each classifier it was evaluated by, exit1 first).

        ``calibrated``: judge the temperature-scaled confidences. Unset, a named threshold uses
        the confidences it was fitted on and an explicit one the raw confidences; a named
        threshold asked for on the other kind is refused (its fit, and guarantee, do not hold there).
        ``exit_rule`` likewise: unset, the model's own (the one its thresholds were fitted with); another
        rule takes an explicit threshold only.
        """
        x = self._batch(images)
        name, tau = self._choose(threshold, budget, use_max_drop)
        if name is not None and calibrated is not None and bool(calibrated) != self.calibrated:
            fitted = "calibrated" if self.calibrated else "raw"
            raise ValueError(
                f"threshold {name!r} was fitted on {fitted} confidences: leave calibrated unset "
                f"or set it to {str(self.calibrated).lower()}"
            )
        calibrated = self.calibrated if calibrated is None and name is not None else bool(calibrated)
        rule = self.exit_rule if exit_rule is None else check_rule(str(exit_rule))
        if name is not None and rule != self.exit_rule:
            raise ValueError(
                f"threshold {name!r} was fitted for the {self.exit_rule} rule: leave exit_rule unset, "
                f"or give an explicit threshold for the {rule} rule"
            )
        if calibrated and self.temperatures is None:
            raise ValueError("calibrated answers need temperatures, and this model has none")
        result = predict(
            self.model,
            x,
            tau,
            temperatures=self.temperatures if calibrated else None,
            keep_logits=return_logits,
            rule=rule,
            runner=self.runner,
        )
        classes, exits = result.classes.cpu().tolist(), result.exit_index.cpu().tolist()
        columns: dict[str, list] = {
            "class": classes,
            "class_name": [self.class_names[c] for c in classes],
            "confidence": result.confidence.cpu().double().tolist(),
            "exit": [self.names[e] for e in exits],
            "exit_index": exits,
            # Above 1 no exit head ran (predict's main_only): the main output alone.
            "gflops": [self.costs.main_only if tau > 1.0 else self.costs.anytime[e] for e in exits],
        }
        if return_logits:
            if result.logits is None:  # predict keeps them when keep_logits is set
                raise RuntimeError("predict returned no logits for keep_logits=True")
            columns["logits"] = [[row.tolist() for row in rows] for rows in result.logits]
        return columns


def _exact_pixels(values: np.ndarray) -> np.ndarray:
    """``values`` as uint8 when every one is an integer 0..255; a ValueError naming one that is not."""
    bad = (
        ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values > 255)
        if np.issubdtype(values.dtype, np.floating)
        else (values < 0) | (values > 255)
    )
    if bad.any():
        example = values[bad].flat[0]
        shown = f"{example:g}" if np.issubdtype(values.dtype, np.floating) else str(example)
        raise ValueError(
            f"raw pixels must be integers 0..255 (got {shown}); send uint8 RGB values, not normalized or scaled ones"
        )
    return values.astype(np.uint8)


# Settings a served model takes (JSON, beside its checkpoint): the keyword arguments of ServedModel.
SETTING_KEYS = (
    "normalization",
    "thresholds",
    "temperatures",
    "class_names",
    "default",
    "image_size",
    "calibrated",
    "exit_rule",
)
# Chosen where the model is loaded, never stored with it (a pyfunc model's model_config), and their
# defaults. Eager: a server's single-image requests are answered faster eager on CPU (and it starts in
# seconds, not after compiling); compiled pays for batches (BENCHMARKS.md, serving and latency).
LOAD_DEFAULTS = {"compiled": False}
LOAD_OPTIONS = tuple(LOAD_DEFAULTS)


def load_served(
    checkpoint_path: str | Path, settings: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> ServedModel:
    """The served model of a checkpoint file and its settings (:data:`SETTING_KEYS`;
    ``normalization`` required), with the load-time ``options`` (:data:`LOAD_DEFAULTS` where unset): what a
    logged served model is built from where it is loaded."""
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown or "normalization" not in settings:
        raise ValueError(
            f"served-model settings take {', '.join(SETTING_KEYS)} (normalization required); got {sorted(settings)}"
        )
    options = dict(options or {})
    if set(options) - set(LOAD_OPTIONS):
        raise ValueError(
            f"a served model loads with the options {', '.join(LOAD_OPTIONS)}; "
            f"got {sorted(set(options) - set(LOAD_OPTIONS))}"
        )
    arguments = {key: value for key, value in settings.items() if value is not None}
    options = {**LOAD_DEFAULTS, **options}
    return ServedModel(Checkpoint.load(checkpoint_path), **arguments, compiled=bool(options["compiled"]))
