"""The training curves, paper Figs. 3 and 5, from a run's metric history
(``{"train/acc_main": [(epoch, value), ...], ...}``, what the trainer keeps), in percent.

Apart from :mod:`eed.reporting.figures` because the train stage draws Fig. 5 into its MLflow
run as it trains (so this module is one of its DVC dependencies); the report stage writes both
figures' files.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from eed.models.multi_exit import output_order, output_position
from eed.reporting.canvas import integer_epochs, new_figure, save_figure, saved_files, split_name, title
from eed.reporting.records import EPOCH_ACCURACY_PREFIX, History

# The per-epoch accuracy metrics of each split (the final test/acc_* are not per epoch).


def _accuracy_series(history: History, split: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{classifier: (epochs, accuracies in %)}`` of ``split``'s per-epoch accuracy metrics."""
    series = {}
    prefix = EPOCH_ACCURACY_PREFIX[split]
    keys = [k for k in history if k.startswith(prefix) and output_order(k[len(prefix) :]) is not None]
    for key in sorted(keys, key=lambda k: output_position(k[len(prefix) :])):
        points = sorted(history[key])
        if points:
            series[key[len(prefix) :]] = ([step for step, _ in points], [100 * value for _, value in points])
    return series


def evaluation_split(history: History) -> str:
    """The per-epoch held-out split: ``val``, or ``test`` when the run had no validation split."""
    return "val" if any(key.startswith("val/acc_") for key in history) else "test"


def _build_main_vs_ensemble(history: History, *, caption: str = "") -> Figure | None:
    held_out = evaluation_split(history)
    figure = new_figure(6.4, 4.4)
    axes = figure.subplots()
    drawn = False
    for split, style in (("train", "-"), (held_out, "--")):
        series = _accuracy_series(history, split)
        for name, color in (("main", "tab:blue"), ("ensemble", "tab:red")):
            if name in series:
                epochs, values = series[name]
                axes.plot(
                    epochs, values, style, color=color, marker="o", markersize=3, label=f"{split_name(split)}: {name}"
                )
                drawn = True
    if not drawn:
        return None
    integer_epochs(axes)
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"solid: training split, dashed: {split_name(held_out)} split", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    title(figure, "Main output vs. ensemble of all classifiers (Fig. 3)", caption)
    return figure


def plot_main_vs_ensemble(history: History, path: str | Path, *, caption: str = "") -> Path | None:
    """Fig. 3: train and held-out accuracy of the main output and of the ensemble per epoch."""
    figure = _build_main_vs_ensemble(history, caption=caption)
    return None if figure is None else save_figure(figure, path)


def build_stability(history: History, *, caption: str = "") -> Figure | None:
    splits = [s for s in EPOCH_ACCURACY_PREFIX if _accuracy_series(history, s)]
    if not splits:
        return None
    figure = new_figure(4.8 * len(splits), 4.4)
    panels = figure.subplots(1, len(splits), squeeze=False)[0]
    for axes, split in zip(panels, splits):
        for name, (epochs, values) in _accuracy_series(history, split).items():
            if name != "ensemble":  # Fig. 3 draws the ensemble; Fig. 5 is about each classifier
                axes.plot(epochs, values, marker="o", markersize=3, label=name)
        integer_epochs(axes)
        axes.set_ylabel("top-1 accuracy (%)")
        axes.set_title(f"{split_name(split)} split", fontsize="medium")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    title(figure, "Per-epoch accuracy of every classifier (Fig. 5): how stable each exit trains", caption)
    return figure


def plot_stability(history: History, path: str | Path, *, caption: str = "") -> Path | None:
    """Fig. 5: per-epoch accuracy of every classifier, one panel per split."""
    figure = build_stability(history, caption=caption)
    return None if figure is None else save_figure(figure, path)


def plot_training_curves(history: History, out_dir: str | Path, *, caption: str = "") -> list[Path]:
    """Write ``training_curves`` (Fig. 3) and ``stability`` (Fig. 5), PNG and SVG, into
    ``out_dir``; returns the files written (none when the history has no accuracy metrics)."""
    out_dir = Path(out_dir)
    written = [
        plot_main_vs_ensemble(history, out_dir / "training_curves.png", caption=caption),
        plot_stability(history, out_dir / "stability.png", caption=caption),
    ]
    return [file for png in written for file in saved_files(png)]
