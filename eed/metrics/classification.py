"""Accuracy, calibration and agreement of many classifiers at once: pure tensor maths on
collected logits ``(k, N, C)`` (``k`` classifiers, ``N`` samples, ``C`` classes), vectorised
over classifiers and samples. Accuracies and calibration errors are fractions in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor


def ensemble_logits(logits: Tensor) -> Tensor:
    """Mean logits of all classifiers (the paper's G_z): (k, N, C) -> (N, C)."""
    return logits.mean(dim=0)


def running_ensemble_logits(logits: Tensor) -> Tensor:
    """Entry j-1 is the mean logits of the first j classifiers: (k, N, C) -> (k, N, C)."""
    counts = torch.arange(1, logits.shape[0] + 1, dtype=logits.dtype, device=logits.device)
    return logits.cumsum(dim=0) / counts[:, None, None]


def topk_correct(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Whether the label is among the k highest logits: (..., N, C) -> (..., N) bool."""
    if k == 1:
        return logits.argmax(dim=-1) == labels
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels[..., None]).any(dim=-1)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Fraction of samples whose label is in the top k: (..., N, C) -> (...)."""
    return topk_correct(logits, labels, k).double().mean(dim=-1)


def top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 of each classifier, then of the ensemble of all of them: (k, N, C) -> (k+1,)."""
    return topk_accuracy(torch.cat([logits, ensemble_logits(logits)[None]]), labels)


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> Tensor:
    """ECE with ``bins`` equal-width confidence bins (lo, hi]: sum over bins of
    |sum of confidences - number correct| / N, i.e. the bin-weighted |accuracy - confidence|.
    (..., N, C) -> (...)."""
    confidence, predicted = logits.float().softmax(dim=-1).max(dim=-1)
    correct = (predicted == labels).double()
    batch_shape, n = confidence.shape[:-1], confidence.shape[-1]
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence is never 0 after softmax.
    bin_index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    flat_index = bin_index.reshape(-1, n)
    confidence_sum = torch.zeros(flat_index.shape[0], bins, dtype=torch.float64)
    correct_sum = torch.zeros_like(confidence_sum)
    confidence_sum.scatter_add_(1, flat_index, confidence.double().reshape(-1, n))
    correct_sum.scatter_add_(1, flat_index, correct.reshape(-1, n))
    return ((confidence_sum - correct_sum).abs().sum(dim=1) / n).reshape(batch_shape)


def agreement_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """Fig. 2: per exit, a 2x2 count matrix; rows = exit correct/incorrect, columns = main
    correct/incorrect. (k, N, C) -> (k-1, 2, 2) int64; each matrix sums to N."""
    correct = logits.argmax(dim=-1) == labels  # (k, N)
    exits, main = correct[:-1], correct[-1][None]
    both = (exits & main).sum(dim=1)
    exit_only = (exits & ~main).sum(dim=1)
    main_only = (~exits & main).sum(dim=1)
    neither = (~exits & ~main).sum(dim=1)
    return torch.stack([torch.stack([both, exit_only], dim=1), torch.stack([main_only, neither], dim=1)], dim=1)
