"""Every figure the project draws, as PNG files.

Figures are built on :class:`matplotlib.figure.Figure` directly and saved through the Agg
canvas: no pyplot, so no global state, no display and nothing to close by hand, which keeps
them safe to draw from a training process or a test.

* :func:`plot_training_curves` — paper Figs. 3 and 5 from a run's metric history
  (``{"train/acc_main": [(epoch, value), ...], ...}``, what the trainer keeps);
* :func:`plot_agreement` — Fig. 2, exit vs main correct/incorrect counts;
* :func:`plot_anytime` — the early-exit accuracy/GFLOPs curve;
* :func:`plot_rdms` — Fig. 4, representational dissimilarity matrices;
* :func:`plot_comparison` — the ``eed compare`` table as accuracy per classifier;
* :func:`plot_flops` — Table III as bars, the cost of each output.

A new figure goes here, drawn from a result object (never recomputing metrics).

Accuracies arrive as fractions and are drawn in percent, like the paper's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eed.models.multi_exit import output_order

if TYPE_CHECKING:
    from torch import Tensor

    from eed.metrics.anytime import AnytimeReport
    from eed.metrics.flops import FlopsProfile
    from eed.metrics.rdm import RdmResult
    from eed.reporting.comparison import ComparisonTable

History = dict[str, list[tuple[int, float]]]

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


# --------------------------------------------------------------------------- training curves


# The per-epoch accuracy metrics of each split (the final test/acc_* are not per epoch).
EPOCH_ACCURACY_PREFIX = {"train": "train/acc_", "val": "val/acc_", "test": "test/epoch_acc_"}


def _accuracy_series(history: History, split: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{classifier: (epochs, accuracies in %)}`` of ``split``'s per-epoch accuracy metrics."""
    series = {}
    prefix = EPOCH_ACCURACY_PREFIX[split]
    keys = [k for k in history if k.startswith(prefix) and output_order(k[len(prefix):]) is not None]
    for key in sorted(keys, key=lambda k: output_order(k[len(prefix):])):
        points = sorted(history[key])
        if points:
            series[key[len(prefix):]] = ([step for step, _ in points], [100 * value for _, value in points])
    return series


def evaluation_split(history: History) -> str:
    """The per-epoch held-out split: ``val``, or ``test`` when the run had no validation split."""
    return "val" if any(key.startswith("val/acc_") for key in history) else "test"


def plot_main_vs_ensemble(history: History, path: str | Path) -> Path | None:
    """Fig. 3: train and held-out accuracy of the main output and of the ensemble per epoch."""
    held_out = evaluation_split(history)
    figure = new_figure(6.4, 4.2)
    axes = figure.subplots()
    drawn = False
    for split, style in (("train", "-"), (held_out, "--")):
        series = _accuracy_series(history, split)
        for name, color in (("main", "tab:blue"), ("ensemble", "tab:red")):
            if name in series:
                epochs, values = series[name]
                axes.plot(epochs, values, style, color=color, marker="o", markersize=3, label=f"{split} {name}")
                drawn = True
    if not drawn:
        return None
    axes.set(xlabel="epoch", ylabel="accuracy (%)", title="Main output vs. ensemble of all classifiers")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_stability(history: History, path: str | Path) -> Path | None:
    """Fig. 5: per-epoch accuracy of every classifier, one panel per split."""
    splits = [s for s in EPOCH_ACCURACY_PREFIX if _accuracy_series(history, s)]
    if not splits:
        return None
    figure = new_figure(5.2 * len(splits), 4.2)
    panels = figure.subplots(1, len(splits), squeeze=False)[0]
    for axes, split in zip(panels, splits):
        for name, (epochs, values) in _accuracy_series(history, split).items():
            if name != "ensemble":
                axes.plot(epochs, values, marker="o", markersize=3, label=name)
        axes.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{split}: every classifier")
        axes.grid(alpha=0.3)
        axes.legend()
    return save_figure(figure, path)


def plot_training_curves(history: History, out_dir: str | Path) -> list[Path]:
    """Write ``training_curves.png`` (Fig. 3) and ``stability.png`` (Fig. 5) into ``out_dir``;
    returns the files written (none when the history has no accuracy metrics)."""
    out_dir = Path(out_dir)
    written = [plot_main_vs_ensemble(history, out_dir / "training_curves.png"),
               plot_stability(history, out_dir / "stability.png")]
    return [path for path in written if path is not None]


# --------------------------------------------------------------------------- evaluation figures


def plot_agreement(agreement: "Tensor", names: Sequence[str], path: str | Path) -> Path:
    """Fig. 2: for each exit, counts of (exit correct/incorrect) x (main correct/incorrect).

    ``agreement``: (k-1, 2, 2), rows = exit correct/incorrect, columns = main correct/incorrect.
    """
    count = agreement.shape[0]
    figure = new_figure(3.2 * max(count, 1), 3.2)
    panels = figure.subplots(1, max(count, 1), squeeze=False)[0]
    for axes, matrix, name in zip(panels, agreement.tolist(), names):
        axes.imshow(matrix, cmap="Blues")
        peak = max(max(row) for row in matrix) or 1
        for row in range(2):
            for column in range(2):
                value = matrix[row][column]
                axes.text(column, row, f"{value}", ha="center", va="center",
                          color="white" if value > peak / 2 else "black")
        axes.set_xticks([0, 1], ["correct", "incorrect"])
        axes.set_yticks([0, 1], ["correct", "incorrect"])
        axes.set(xlabel="main", ylabel=name, title=f"{name} vs main")
    return save_figure(figure, path)


def plot_anytime(report: "AnytimeReport", path: str | Path) -> Path:
    """Early-exit accuracy against average GFLOPs per sample, each classifier alone as a point,
    budget thresholds (fitted on validation, reported here) as stars."""
    curve = report.curve
    figure = new_figure(6.4, 4.2)
    axes = figure.subplots()
    order = curve.gflops.argsort()
    axes.plot(curve.gflops[order].tolist(), (100 * curve.accuracy[order]).tolist(), "-", color="tab:blue",
              label="early exit (threshold sweep)")
    for name, cost, accuracy in zip(curve.names, report.costs.standalone, report.classifier_accuracy):
        axes.scatter([cost], [100 * accuracy], color="black", zorder=3)
        axes.annotate(name, (cost, 100 * accuracy), textcoords="offset points", xytext=(4, -10))
    for fit in report.budgets:
        axes.axvline(fit.budget, color="gray", linestyle=":", linewidth=1)
        if fit.feasible and fit.gflops is not None:
            axes.scatter([fit.gflops], [100 * fit.accuracy], marker="*", s=120, color="tab:red", zorder=4,
                         label=f"budget {fit.budget:g}: tau={fit.threshold:.2f}")
    axes.set(xlabel="GFLOPs per sample", ylabel="accuracy (%)", title="Anytime prediction")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_rdms(result: "RdmResult", path: str | Path) -> Path:
    """Fig. 4: one column per layer; top row all samples, bottom row the class subset.
    Samples are sorted by class, so same-class blocks sit on the diagonal."""
    layers = list(result.rdms)
    figure = new_figure(3.6 * len(layers) + 0.8, 7.0)
    panels = figure.subplots(2, len(layers), squeeze=False)
    image = None
    for column, layer in enumerate(layers):
        for row, (rdm, labels, title) in enumerate((
                (result.rdms[layer], result.labels, f"{layer}: {len(result.labels)} samples"),
                (result.subset_rdms[layer], result.subset_labels,
                 f"{layer}: {len(result.subset_classes)} classes"))):
            axes = panels[row][column]
            image = axes.imshow(rdm.numpy(), cmap="viridis", vmin=0.0, vmax=2.0, interpolation="nearest")
            # Thin lines where the class changes show the blocks.
            boundaries = (labels[1:] != labels[:-1]).nonzero().flatten().tolist()
            if len(boundaries) <= 20:
                for boundary in boundaries:
                    axes.axhline(boundary + 0.5, color="white", linewidth=0.4)
                    axes.axvline(boundary + 0.5, color="white", linewidth=0.4)
            axes.set_title(title, fontsize="medium")
            axes.set_xticks([])
            axes.set_yticks([])
    if image is not None:
        figure.colorbar(image, ax=panels, shrink=0.8, label="1 - Pearson r")
    return save_figure(figure, path)


def plot_comparison(table: "ComparisonTable", path: str | Path) -> Path:
    """Accuracy of each classifier (mean, error bars = sample std over seeds), one line per row."""
    figure = new_figure(max(6.4, 1.2 * len(table.columns) + 3), 4.4)
    axes = figure.subplots()
    positions = list(range(len(table.columns)))
    for row in table.rows:
        xs, means, stds = [], [], []
        for x, column in zip(positions, table.columns):
            cell = row.cells.get(column)
            if cell is not None:
                xs.append(x)
                means.append(100 * cell.mean)
                stds.append(100 * (cell.std or 0.0))
        axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=row.label)
    axes.set_xticks(positions, [table.column_title(column) for column in table.columns])
    axes.set(ylabel="accuracy (%)", title=f"{table.meaning}\n(mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_flops(profile: "FlopsProfile", path: str | Path) -> Path:
    """Bar chart of the GFLOPs needed for each output, labelled with % of the main output."""
    figure = new_figure(5, 3.5)
    axes = figure.subplots()
    names = [output.name for output in profile.outputs]
    bars = axes.bar(names, [output.gflops for output in profile.outputs], color="tab:blue")
    axes.bar_label(bars, labels=[f"{percent:.0f}%" for percent in profile.percent_of_main()])
    axes.set_ylabel("GFLOPs per image")
    axes.set_title(f"{profile.arch or 'model'}: cost of each output ({profile.input_size}x{profile.input_size})")
    axes.margins(y=0.15)
    return save_figure(figure, path)
