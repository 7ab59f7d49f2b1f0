"""Stratified, seeded selection of images: the validation split carved from the training
set, and the ``train_subset`` a run trains on.

Both draw the same fraction from every class (largest-remainder rounding when the size
does not divide evenly) so a subset keeps the class balance of its parent set. Each use
has its own random stream (``purpose``), so changing ``val_size`` does not reshuffle
which images a ``train_subset`` picks, and vice versa.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Purpose = Literal["val_split", "train_subset"]
_PURPOSE_STREAM = {"val_split": 0, "train_subset": 1}


def per_class_quota(class_counts: np.ndarray, size: int) -> np.ndarray:
    """How many of ``size`` items each class contributes, proportional to its count."""
    total = int(class_counts.sum())
    exact = class_counts * (size / total)
    quota = np.floor(exact).astype(np.int64)
    # Hand the leftover items to the classes with the largest fractional parts (ties: lower class).
    leftover = size - int(quota.sum())
    order = np.lexsort((np.arange(len(exact)), -(exact - quota)))
    quota[order[:leftover]] += 1
    return np.minimum(quota, class_counts)


def stratified_sample(labels: np.ndarray, size: int, seed: int, purpose: Purpose) -> np.ndarray:
    """Sorted indices of ``size`` items of ``labels``, drawn per class in proportion.

    Deterministic for a given ``(labels, size, seed, purpose)``.
    """
    labels = np.asarray(labels)
    if not 0 <= size <= len(labels):
        raise ValueError(f"cannot draw {size} items from {len(labels)}")
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    classes, class_counts = np.unique(labels, return_counts=True)
    quota = per_class_quota(class_counts, size)
    rng = np.random.default_rng([seed, _PURPOSE_STREAM[purpose]])
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_off(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, taken)``: sorted indices of the training images that stay and of the
    ``size`` images taken out for validation."""
    taken = stratified_sample(labels, size, seed, "val_split")
    kept = np.setdiff1d(np.arange(len(labels)), taken, assume_unique=True)
    return kept, taken
