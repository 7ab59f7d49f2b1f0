"""Early-exit (anytime) inference that really stops computing.

The exit rule and its costs live in :mod:`eed.metrics.anytime`, which evaluates them on
collected logits; :func:`cascade` applies the same rule while running a network cut into
segments (:func:`segments`: the stages up to and including one classifier's), removing the
samples that have left from the batch before the next segment runs. :func:`predict` cascades
a :class:`MultiExitNet`; :mod:`eed.inference.programs` cascades the same segments exported with
``torch.export``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eed.metrics.anytime import RuleStep, check_rule, confidences, leaves, rule_step
from eed.models.multi_exit import MultiExitNet

# hidden -> (hidden, logits of the segment's classifier): one piece of the cascade.
SegmentFn = Callable[[Tensor], tuple[Tensor, Tensor]]


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


class Segment(nn.Module):
    """The part of a network between two classifiers: (the stem, for the first,) the stages
    from the one after the previous classifier's stage up to this classifier's, then the
    classifier. Maps that hidden state to (its own output hidden state, the logits)."""

    def __init__(self, model: MultiExitNet, classifier: int):
        super().__init__()
        first = 0 if classifier == 0 else model.classifier_stages[classifier - 1] + 1
        last = model.classifier_stages[classifier]
        self.model, self.classifier, self.stage_indices = model, classifier, list(range(first, last + 1))

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        if self.classifier == 0:
            hidden = self.model.stem(hidden)
        for index in self.stage_indices:
            hidden = self.model.stages[index](hidden)
        _, logits = self.model.classify(self.classifier, hidden)
        return hidden, logits


def segments(model: MultiExitNet) -> list[Segment]:
    """The network as k segments, one per classifier (exit1 first, main last); the first takes images."""
    return [Segment(model, classifier) for classifier in range(model.num_classifiers)]


@dataclass
class Runner:
    """What :func:`predict` runs: the cascade's k segments, and the main output alone (images -> the
    main logits, no exit head) for a threshold above 1. Eager by default (:func:`eager_runner`);
    :func:`eed.inference.compiled.compiled_runner` gives the same pieces compiled."""

    segments: Sequence[SegmentFn]
    main: Callable[[Tensor], Tensor]


def eager_runner(model: MultiExitNet) -> Runner:
    return Runner(segments(model), model.forward_main)


def cascade(
    pieces: Sequence[SegmentFn],
    x: Tensor,
    threshold: float,
    *,
    temperatures: Sequence[float] | Tensor | None = None,
    keep_logits: bool = False,
    rule: str = "confidence",
) -> Prediction:
    """Early exit over ``pieces`` (k segments, :func:`segments` or their exported programs).

    After each segment, samples whose score under ``rule`` (``anytime.EXIT_RULES``) reaches
    ``threshold`` leave; the next segment runs only on the rest, and the loop ends when none are
    left. ``temperatures`` (one per classifier): the rule judges ``logits / T_i`` (temperature
    scaling; the predicted classes are unchanged). ``keep_logits`` keeps each sample's raw logits
    of every classifier it went through.
    """
    check_rule(rule)
    n, device, k = x.shape[0], x.device, len(pieces)
    classes = torch.empty(n, dtype=torch.long, device=device)
    exit_index = torch.empty(n, dtype=torch.long, device=device)
    confidence = torch.empty(n, dtype=torch.float32, device=device)
    scale = None if temperatures is None else [float(t) for t in temperatures]
    if scale is not None and len(scale) != k:
        raise ValueError(f"{len(scale)} temperatures for {k} classifiers")
    kept: list[list[Tensor]] = [[] for _ in range(n)]
    with torch.inference_mode():
        remaining = torch.arange(n, device=device)  # original positions still in the batch
        hidden, step = x, None
        for classifier, piece in enumerate(pieces):
            hidden, logits = piece(hidden)
            if keep_logits:
                for position, row in zip(remaining.tolist(), logits.float().cpu()):
                    kept[position].append(row)
            step = rule_step(logits if scale is None else logits / scale[classifier], rule, k, step)
            done = leaves(step.score, threshold)
            # Everyone leaves (the main output, or a batch of one that is sure): no re-indexing.
            if classifier == k - 1 or bool(done.all()):
                classes[remaining], confidence[remaining], exit_index[remaining] = (
                    step.classes,
                    step.confidence,
                    classifier,
                )
                break
            if not bool(done.any()):  # nobody leaves: the batch goes on as it is
                continue
            leaving = remaining[done]
            classes[leaving] = step.classes[done]
            confidence[leaving] = step.confidence[done]
            exit_index[leaving] = classifier
            remaining, hidden = remaining[~done], hidden[~done]
            step = RuleStep(*(part[~done] for part in (step.score, step.confidence, step.classes, step.streak)))
    return Prediction(classes, exit_index, confidence, logits=kept if keep_logits else None)


def main_only(
    model: MultiExitNet,
    x: Tensor,
    *,
    temperatures: Sequence[float] | Tensor | None = None,
    keep_logits: bool = False,
    main: Callable[[Tensor], Tensor] | None = None,
) -> Prediction:
    """Every sample answered by the main output, the exits never computed: what a threshold above 1
    gives, at the cost of the network without exits. ``main``: what computes the main logits
    (default ``model.forward_main``; a :class:`Runner`'s)."""
    with torch.inference_mode():
        logits = (main or model.forward_main)(x)
    scale = 1.0 if temperatures is None else float(list(temperatures)[-1])
    confidence, classes = confidences(logits / scale)
    exit_index = torch.full_like(classes, model.num_classifiers - 1)
    kept = [[row] for row in logits.float().cpu()] if keep_logits else None
    return Prediction(classes, exit_index, confidence.float(), logits=kept)


def predict(
    model: MultiExitNet,
    x: Tensor,
    threshold: float,
    *,
    count_stages: bool = False,
    temperatures: Sequence[float] | Tensor | None = None,
    keep_logits: bool = False,
    rule: str = "confidence",
    runner: Runner | None = None,
) -> Prediction:
    """Early-exit inference under ``rule`` on a batch that really stops computing: :func:`cascade`
    over the network's segments (above 1, :func:`main_only`: no exit head at all), in eval mode
    (BatchNorm must use running statistics: the batch shrinks as samples leave). ``runner``: the
    pieces to run (default: the eager ones; a compiled runner gives the same answers). ``count_stages``
    records, with forward hooks, how many samples each stage processed (eager pieces only: a
    compiled graph runs no hook)."""
    if count_stages and runner is not None:
        raise ValueError(
            "count_stages counts with forward hooks, which compiled pieces do not run: leave runner unset to count"
        )
    runner = runner or eager_runner(model)
    stage_samples = [0] * len(model.stages)
    hooks = []
    if count_stages:
        for i, stage in enumerate(model.stages):

            def count(module, inputs, output, i=i):
                stage_samples[i] += inputs[0].shape[0]

            hooks.append(stage.register_forward_hook(count))
    # Only a model in training mode is switched (and back): Module.train walks every submodule, a
    # cost of the order of a small network's forward pass at batch 1.
    was_training = model.training
    if was_training:
        model.eval()
    try:
        if threshold > 1.0:  # no score reaches it: the main output alone, no exit head computed
            result = main_only(model, x, temperatures=temperatures, keep_logits=keep_logits, main=runner.main)
        else:
            result = cascade(
                runner.segments, x, threshold, temperatures=temperatures, keep_logits=keep_logits, rule=rule
            )
    finally:
        if was_training:
            model.train()
        for hook in hooks:
            hook.remove()
    if count_stages:
        result.stage_samples = stage_samples
    return result
