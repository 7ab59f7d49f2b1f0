"""The two loops over data, side by side as in torchvision's references: one training epoch
(:func:`train_one_epoch`) and one pass that keeps every classifier's outputs
(:func:`collect_outputs`, which validation, evaluation and the RDMs share).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from rich.progress import Progress
from torch import Tensor, nn

from eed.engine.runtime import Runtime, unwrap
from eed.errors import NonFiniteLossError
from eed.metrics.classification import top1_accuracy
from eed.metrics.collected import Collected
from eed.objectives import ExitEnsembleObjective
from eed.progress import RefreshClock

# --------------------------------------------------------------------------- training


@dataclass
class EpochStats:
    """Means over the steps run in one call (the trainer joins the parts of an epoch interrupted
    and resumed mid-way)."""

    loss_terms: dict[str, float]
    accuracy: dict[str, float]  # per classifier and "ensemble", on the augmented training batches
    images: int
    seconds: float
    steps_done: int  # the epoch's steps done, counting those skipped when resuming mid-epoch
    completed: bool
    steps_run: int = 0  # steps this call trained (the means are over these)

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def batch_correct(logits: list[Tensor], target: Tensor) -> Tensor:
    """Correct predictions of each classifier and of the ensemble (mean logits): shape (k+1,)."""
    stacked = torch.stack([z.detach().float() for z in logits])
    ensemble = stacked.mean(0, keepdim=True)
    predictions = torch.cat([stacked, ensemble]).argmax(-1)
    return (predictions == target).sum(1)


def train_one_epoch(
    model: nn.Module,
    objective: ExitEnsembleObjective,
    loader,
    optimizer,
    scheduler,
    runtime: Runtime,
    *,
    epoch: int,
    classifier_names: list[str],
    skip_steps: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Progress | None = None,
    clock: RefreshClock | None = None,
) -> EpochStats:
    """One epoch of SGD steps, from step ``skip_steps`` (a resumed epoch), until the loader ends or
    ``should_stop()`` says so after a step. ``clock`` says when the bar is rendered and the loss
    checked (both wait for the device); default every :data:`eed.progress.REFRESH_S`. A
    non-finite loss raises :class:`NonFiniteLossError` naming the epoch, the steps and the terms,
    before the caller can checkpoint the weights it changed."""
    model.train()
    steps = len(loader)
    term_sums: dict[str, Tensor] = {}
    correct = torch.zeros(len(classifier_names) + 1, dtype=torch.long, device=runtime.device)
    images = 0
    task = progress.add_task(f"epoch {epoch}", total=steps, completed=skip_steps, info="") if progress else None
    started = time.perf_counter()
    clock = clock or RefreshClock()
    step = skip_steps
    # Whether every loss since the last check was finite, kept on the device: reading it is a
    # host sync, so it is read only at the render interval (and before the epoch ends).
    finite = torch.ones((), dtype=torch.bool, device=runtime.device)
    checked = skip_steps  # steps known to have had finite losses
    result = None

    def check_finite() -> None:
        nonlocal checked
        if step > checked and not bool(finite):
            assert result is not None  # a step ran (step > checked), and it set result
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in result.terms.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, in steps {checked + 1}-{step} of {steps} (at step {step}: {terms})"
            )
        checked = step

    for step_index, (inputs, target) in enumerate(loader):
        if step_index < skip_steps:  # resuming mid-epoch: same order, already trained on
            continue
        inputs = inputs.to(runtime.device, non_blocking=True)
        target = target.to(runtime.device, non_blocking=True)
        if runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            output = model(inputs)
            result = objective(output, target)
        loss = result.total
        finite &= torch.isfinite(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for name, value in result.terms.items():
            term_sums[name] = term_sums.get(name, 0) + value.detach()
        term_sums["loss"] = term_sums.get("loss", 0) + loss.detach()
        correct += batch_correct(output.logits, target)
        images += target.shape[0]
        step = step_index + 1
        if clock.due() or step == steps:
            # Rendered here, between steps (see eed.progress): like the finite check,
            # loss.item() waits for the device, so both run only this often.
            check_finite()
            if progress is not None and task is not None:  # task is None exactly when progress is
                rate = images / max(time.perf_counter() - started, 1e-9)
                progress.update(task, completed=step, info=f"loss {loss.item():.3f} · {rate:,.0f} img/s", refresh=True)
        if should_stop():
            break
    check_finite()  # a stop mid-epoch must not checkpoint weights a non-finite loss updated
    seconds = time.perf_counter() - started
    if progress is not None and task is not None:
        progress.remove_task(task)
        progress.refresh()
    return _epoch_stats(
        term_sums,
        correct,
        images,
        runtime,
        classifier_names,
        seconds=seconds,
        steps_done=step,
        steps_run=step - skip_steps,
        completed=step == steps,
    )


def _epoch_stats(
    term_sums: dict[str, Tensor],
    correct: Tensor,
    images: int,
    runtime: Runtime,
    classifier_names: list[str],
    *,
    seconds: float,
    steps_done: int,
    steps_run: int,
    completed: bool,
) -> EpochStats:
    """The epoch's means from its sums, summed over the ranks under DDP (each saw its own shard)."""
    totals = torch.stack([term_sums[k] for k in term_sums]) if term_sums else torch.zeros(0)
    counts = torch.cat([correct.float(), torch.tensor([float(images)], device=runtime.device)])
    if runtime.distributed:
        totals = totals.to(runtime.device)
        dist.all_reduce(totals)
        dist.all_reduce(counts)
        totals /= runtime.world_size
    all_images = int(counts[-1].item())
    names = [*classifier_names, "ensemble"]
    return EpochStats(
        loss_terms={k: float(v) / max(steps_run, 1) for k, v in zip(term_sums, totals.tolist())},
        accuracy={n: float(c) / max(all_images, 1) for n, c in zip(names, counts[:-1].tolist())},
        images=all_images,
        seconds=seconds,
        steps_done=steps_done,
        completed=completed,
        steps_run=steps_run,
    )


# --------------------------------------------------------------------------- one pass, every output


def collect_outputs(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device | str,
    *,
    with_features: bool = False,
    autocast: Callable[[], AbstractContextManager] | None = None,
    channels_last: bool = False,
) -> Collected:
    """One forward pass per batch; logits (and features) of every classifier for every sample.

    Outputs stay on ``device`` until the end (no per-batch synchronisation); labels are
    copied because some loaders reuse their label buffer. ``autocast`` is a callable
    returning a context manager (e.g. ``Runtime.autocast``); logits are kept in float32.
    """
    was_training = model.training
    model.eval()
    logit_batches: list[Tensor] = []
    label_batches: list[Tensor] = []
    feature_batches: list[list[Tensor]] = []
    input_shape: tuple[int, ...] = ()
    try:
        # no_grad, not inference_mode: FFCV's worker threads write into batch buffers that
        # would become inference tensors here, and in-place writes to those fail outside it.
        with torch.no_grad(), autocast() if autocast else contextlib.nullcontext():
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                input_shape = tuple(images.shape[1:])
                output = model(images)
                logit_batches.append(torch.stack(output.logits).float())
                label_batches.append(labels.to(device, non_blocking=True, copy=True))
                if with_features:
                    feature_batches.append([f.float() for f in output.features])
    finally:
        model.train(was_training)
    if not logit_batches:
        raise ValueError("the loader yielded no batches")
    features = None
    if with_features:
        features = [torch.cat(per_classifier).cpu() for per_classifier in zip(*feature_batches)]
    return Collected(
        logits=torch.cat(logit_batches, dim=1).cpu(),
        labels=torch.cat(label_batches).long().cpu(),
        features=features,
        input_shape=input_shape,
    )


def validate(model: nn.Module, loader, runtime: Runtime, classifier_names: list[str]) -> dict[str, float]:
    """Top-1 of every classifier and of the ensemble of all of them (mean logits)."""
    collected = collect_outputs(
        unwrap(model), loader, runtime.device, autocast=runtime.autocast, channels_last=runtime.channels_last
    )
    accuracies = top1_accuracy(collected.logits, collected.labels)
    return {name: float(acc) for name, acc in zip([*classifier_names, "ensemble"], accuracies)}
