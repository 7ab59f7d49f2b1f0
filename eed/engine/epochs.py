"""One epoch's record: the metrics the trainer logs for it, its line on the console, and an
epoch trained in two parts (stopped mid-way, then resumed) joined into one."""

from __future__ import annotations

from typing import Any

from eed.engine.loops import EpochStats


def epoch_metrics(
    stats: EpochStats, val: dict[str, float] | None, test: dict[str, float], lr: float
) -> dict[str, float]:
    """The history entry of one epoch: training losses and accuracy, validation and test accuracy
    of every output, the learning rate, time and throughput (accuracies as fractions)."""
    metrics = {f"train/{'loss' if k == 'loss' else 'loss_' + k}": v for k, v in stats.loss_terms.items()}
    metrics.update({f"train/acc_{k}": v for k, v in stats.accuracy.items()})
    metrics.update({f"val/acc_{k}": v for k, v in (val or {}).items()})
    metrics.update({f"test/epoch_acc_{k}": v for k, v in test.items()})
    metrics["lr"] = lr
    metrics["epoch_time_s"] = stats.seconds
    metrics["throughput_img_s"] = stats.throughput
    return metrics


def epoch_header(classifier_names: list[str], has_val: bool) -> str:
    """The column names above the epoch lines (printed once)."""
    split = "val" if has_val else "test"
    names = " ".join(f"{_short(name):>5}" for name in [*classifier_names, "ensemble"])
    return f"{'epoch':>7}  {'loss':>6}  {split} top-1 %: {names}  {'time':>5} {'img/s':>6}"


def _short(name: str) -> str:
    return {"ensemble": "ens"}.get(name, name.replace("exit", "e"))


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float], has_val: bool) -> str:
    """One line per epoch under :func:`epoch_header`, accuracies in %: within 80 columns for
    up to 5 classifiers and the ensemble."""
    prefix, split = ("val/acc_", "val") if has_val else ("test/epoch_acc_", "test")
    accs = " ".join(f"{100 * v:5.1f}" for k, v in metrics.items() if k.startswith(prefix))
    return (
        f"{f'{epoch}/{epochs}':>7}  {metrics['train/loss']:6.3f}  {' ' * len(f'{split} top-1 %: ')}{accs}  "
        f"{metrics['epoch_time_s']:4.0f}s {metrics['throughput_img_s']:6,.0f}"
    )


def partial_record(stats: EpochStats) -> dict[str, Any]:
    """What a checkpoint keeps of an interrupted epoch, so that the resumed epoch reports all of it."""
    return {
        "loss_terms": stats.loss_terms,
        "accuracy": stats.accuracy,
        "images": stats.images,
        "seconds": stats.seconds,
        "steps": stats.steps_run,
    }


def whole_epoch(partial: dict[str, Any], rest: EpochStats) -> EpochStats:
    """An epoch trained in two (or more) parts as one: losses weighted by steps, accuracies by
    images, the time of both parts."""
    steps = partial["steps"] + rest.steps_run
    images = partial["images"] + rest.images

    def mean(before: dict[str, float], after: dict[str, float], weight_before: float, weight_after: float):
        total = max(weight_before + weight_after, 1e-12)
        return {k: (before.get(k, 0.0) * weight_before + after[k] * weight_after) / total for k in after}

    return EpochStats(
        loss_terms=mean(partial["loss_terms"], rest.loss_terms, partial["steps"], rest.steps_run),
        accuracy=mean(partial["accuracy"], rest.accuracy, partial["images"], rest.images),
        images=images,
        seconds=partial["seconds"] + rest.seconds,
        steps_done=rest.steps_done,
        completed=rest.completed,
        steps_run=steps,
    )
