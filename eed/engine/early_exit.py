"""Early-exit (anytime) inference that really stops computing.

The exit rule and its costs live in :mod:`eed.metrics.anytime`, which evaluates them on
collected logits; :func:`predict` applies the same rule while running the network, removing
the samples that have left from the batch before the next stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from eed.metrics.anytime import confidences, leaves
from eed.models.multi_exit import MultiExitNet


@dataclass
class Prediction:
    """Per sample: predicted class, classifier it left at (0-based; k-1 = main), confidence."""

    classes: Tensor
    exit_index: Tensor
    confidence: Tensor
    # With ``count_stages=True``: how many samples each trunk stage processed.
    stage_samples: list[int] | None = None
    # With ``keep_logits=True``: per sample, the raw logits of every classifier it was evaluated by.
    logits: list[list[Tensor]] | None = None

    @property
    def stages_run(self) -> int | None:
        """Stage evaluations summed over samples (N x num_stages for a full forward pass)."""
        return None if self.stage_samples is None else sum(self.stage_samples)


def predict(model: MultiExitNet, x: Tensor, threshold: float, *, count_stages: bool = False,
            temperatures: Sequence[float] | Tensor | None = None, keep_logits: bool = False) -> Prediction:
    """Early-exit inference on a batch that really stops computing.

    After each exit, samples whose confidence reaches ``threshold`` are removed from the
    batch; the next stage runs only on the rest, and the loop ends when none are left.
    ``count_stages`` records, with forward hooks, how many samples each stage processed.
    ``temperatures`` (one per classifier): the rule judges the confidence of ``logits / T_i``
    (temperature scaling; the predicted classes are unchanged). ``keep_logits`` keeps each
    sample's raw logits of every classifier it went through.
    """
    n = x.shape[0]
    device = x.device
    classes = torch.empty(n, dtype=torch.long, device=device)
    exit_index = torch.empty(n, dtype=torch.long, device=device)
    confidence = torch.empty(n, dtype=torch.float32, device=device)
    scale = None if temperatures is None else [float(t) for t in temperatures]
    kept: list[list[Tensor]] = [[] for _ in range(n)]
    stage_samples = [0] * len(model.stages)
    hooks = []
    if count_stages:
        for i, stage in enumerate(model.stages):
            def count(module, inputs, output, i=i):
                stage_samples[i] += inputs[0].shape[0]
            hooks.append(stage.register_forward_hook(count))
    was_training = model.training
    model.eval()  # BatchNorm must use running statistics: the batch shrinks as samples leave
    try:
        with torch.inference_mode():
            remaining = torch.arange(n, device=device)  # original positions still in the batch
            hidden = model.stem(x)
            k = model.num_classifiers
            for stage_index, stage in enumerate(model.stages):
                hidden = stage(hidden)
                classifier = model.classifier_after_stage(stage_index)
                if classifier is None:
                    continue
                _, logits = model.classify(classifier, hidden)
                if keep_logits:
                    for position, row in zip(remaining.tolist(), logits.float().cpu()):
                        kept[position].append(row)
                conf, predicted = confidences(logits if scale is None else logits / scale[classifier])
                done = leaves(conf, threshold) if classifier < k - 1 else torch.ones_like(conf, dtype=torch.bool)
                leaving = remaining[done]
                classes[leaving] = predicted[done]
                confidence[leaving] = conf[done]
                exit_index[leaving] = classifier
                remaining, hidden = remaining[~done], hidden[~done]
                if remaining.numel() == 0:
                    break
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return Prediction(classes, exit_index, confidence, stage_samples if count_stages else None,
                      kept if keep_logits else None)
