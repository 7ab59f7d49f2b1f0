"""Every classifier's outputs over a split, as one pass over the data collects them
(:func:`eed.engine.loops.collect_outputs`) and the metrics read them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Collected:
    """Every classifier's outputs over a split, on the CPU."""

    logits: Tensor  # (k, N, C) float32; index -1 = main
    labels: Tensor  # (N,) int64
    features: list[Tensor] | None = None  # F_1..F_k, each (N, D), only when asked for
    input_shape: tuple[int, ...] = ()  # one image's shape (C, H, W)

    @property
    def num_classifiers(self) -> int:
        return self.logits.shape[0]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[1]
