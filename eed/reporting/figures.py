"""Every figure the project draws, each as a PNG (raster, :data:`DPI`) and an SVG (vector)
with the same stem.

Figures are drawn on :mod:`eed.reporting.canvas`; the training curves (Figs. 3 and 5) are in
:mod:`eed.reporting.training_curves`.

* :func:`plot_agreement` — Fig. 2, exit vs main correct/incorrect, in % of each row;
* :func:`plot_anytime` — the early-exit accuracy/GFLOPs curve;
* :func:`plot_exit_rules` — every exit rule's curve on one figure, with its budget thresholds;
* :func:`plot_rdms` — Fig. 4, representational dissimilarity matrices;
* :func:`plot_comparison` — the ``eed compare`` table as grouped bars per classifier;
* :func:`plot_differences` — its differences from the reference rows, with their intervals;
* :func:`plot_flops` — Table III as bars, the cost of each output.

Each ``plot_*`` function has a ``_build_*`` twin that returns the :class:`Figure` unsaved
(for tests); ``plot_*`` saves it and returns the PNG path. Every figure has a title, labelled
axes and, with ``caption=``, a second title line naming the run's configuration.

A new figure goes here, drawn from a result object (never recomputing metrics).

Accuracies arrive as fractions and are drawn in percent, like the paper's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from eed.reporting.canvas import new_figure, save_figure, split_name, title

if TYPE_CHECKING:
    from torch import Tensor

    from eed.metrics.anytime import AnytimeCurve, AnytimeReport
    from eed.metrics.flops import FlopsProfile
    from eed.metrics.rdm import RdmResult
    from eed.metrics.summary import GuaranteedResult
    from eed.reporting.comparison import ComparisonTable
    from eed.reporting.differences import RowDifference


# --------------------------------------------------------------------------- evaluation figures


def agreement_percent(matrix: Sequence[Sequence[float]]) -> list[list[float | None]]:
    """A 2x2 count matrix in % of each row (None for a row without images)."""
    return [[100.0 * value / sum(row) if sum(row) else None for value in row] for row in matrix]


def _build_agreement(agreement: Tensor, names: Sequence[str], *, split: str = "", caption: str = "") -> Figure:
    count = max(agreement.shape[0], 1)
    figure = new_figure(3.0 * count + 1.0, 3.6)
    panels = figure.subplots(1, count, squeeze=False)[0]
    image = None
    matrices = agreement.tolist()
    for axes, matrix, name in zip(panels, matrices, names):
        percent = agreement_percent(matrix)
        # Row %, not counts: the large "both wrong" cell of a weak exit would wash out the scale.
        shown = [[float("nan") if value is None else value for value in row] for row in percent]
        image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=100.0)
        for row in range(2):
            for column in range(2):
                value = percent[row][column]
                text = "no images" if value is None else f"{value:.1f}%\n({matrix[row][column]:,})"
                axes.text(
                    column,
                    row,
                    text,
                    ha="center",
                    va="center",
                    color="white" if value is not None and value > 50 else "black",
                )
        axes.set_xticks([0, 1], ["correct", "incorrect"])
        axes.set_yticks([0, 1], ["correct", "incorrect"])
        axes.set(xlabel="main output", ylabel=name)
        axes.set_title(f"{name} vs main", fontsize="medium")
    if image is not None:
        figure.colorbar(
            image,
            ax=panels,
            shrink=0.8,
            label=f"% of the row ({names[0] if len(names) == 1 else 'exit'} correct / incorrect)",
        )
    total = int(sum(sum(row) for row in matrices[0])) if matrices else 0
    where = f"{split_name(split)} split, {total:,} images" if split else f"{total:,} images"
    title(figure, f"Exit vs. main output agreement (Fig. 2): {where}; cell: % of row (count)", caption)
    return figure


def plot_agreement(
    agreement: Tensor, names: Sequence[str], path: str | Path, *, split: str = "", caption: str = ""
) -> Path:
    """Fig. 2: for each exit, (exit correct/incorrect) x (main correct/incorrect) in % of each
    row (each row sums to 100%), the count under each percentage.

    ``agreement``: (k-1, 2, 2) counts, rows = exit correct/incorrect, columns = main correct/incorrect.
    """
    return save_figure(_build_agreement(agreement, names, split=split, caption=caption), path)


def _sweep_line(curve: AnytimeCurve) -> tuple[list[float], list[float]]:
    """(GFLOPs, top-1 %) of the thresholds up to 1, by cost. Not the point above 1, the main output alone:
    cheaper than reaching it through every exit head, it would draw a spike; it is drawn as its own point."""
    within = curve.thresholds <= 1.0
    gflops, accuracy = curve.gflops[within], curve.accuracy[within]
    order = gflops.argsort(stable=True)
    return gflops[order].tolist(), (100 * accuracy[order]).tolist()


def _build_anytime(
    report: AnytimeReport, *, split: str = "", caption: str = "", guaranteed: GuaranteedResult | None = None
) -> Figure:
    curve = report.curve
    figure = new_figure(6.4, 4.6)
    axes = figure.subplots()
    gflops, accuracy = _sweep_line(curve)
    axes.plot(gflops, accuracy, "-", color="tab:blue", label=f"early exit ({curve.rule} threshold sweep)")
    costs = list(report.costs.standalone)
    middle = (min(costs) + max(costs)) / 2 if costs else 0.0
    for index, (name, cost, accuracy) in enumerate(zip(curve.names, costs, report.classifier_accuracy)):
        axes.scatter(
            [cost],
            [100 * accuracy],
            color="black",
            s=18,
            zorder=3,
            label="each classifier alone" if index == 0 else None,
        )
        # Away from the point, towards the inside of the axes; unclipped so a label near the edge shows whole.
        right_half = cost > middle
        axes.annotate(
            name,
            (cost, 100 * accuracy),
            textcoords="offset points",
            xytext=(-7, 7) if right_half else (7, 7),
            ha="right" if right_half else "left",
            va="bottom",
            fontsize="small",
            clip_on=False,
            annotation_clip=False,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
    # One marker and colour per budget (two stars alike could not be told apart), then the guaranteed threshold.
    styles = [("*", "tab:red"), ("D", "tab:purple"), ("P", "tab:brown"), ("X", "tab:olive"), ("^", "tab:cyan")]
    for index, fit in enumerate(report.budgets):
        marker, colour = styles[index % len(styles)]
        axes.axvline(fit.budget, color=colour, linestyle=":", linewidth=1)
        if fit.feasible and fit.gflops is not None and fit.accuracy is not None:  # (set together)
            axes.scatter(
                [fit.gflops],
                [100 * fit.accuracy],
                marker=marker,
                s=90,
                color=colour,
                zorder=4,
                label=f"budget {fit.budget:g} GFLOPs (dotted): τ {fit.threshold:.2f}",
            )
        else:
            axes.plot([], [], linestyle=":", color=colour, label=f"budget {fit.budget:g} GFLOPs: no τ fits")
    if guaranteed is not None and guaranteed.check.get("gflops") is not None:
        fit, check = guaranteed.fit, guaranteed.check
        where = "main output alone" if fit.main_only else f"τ {fit.threshold:.2f}"
        axes.scatter(
            [check["gflops"]],
            [100 * check["accuracy"]],
            marker="s",
            s=70,
            color="tab:green",
            zorder=5,
            edgecolors="black",
            label=f"drop ≤ {100 * fit.max_drop:g} pt ({where}): {'held' if check['held'] else 'failed'}",
        )
    axes.margins(x=0.12, y=0.15)
    axes.set(xlabel="average GFLOPs per image", ylabel="top-1 accuracy (%)")
    notes = [
        f"{split_name(split)} split" if split else "",
        f"thresholds fitted on the {split_name(report.fit_split)} split" if report.budgets and report.fit_split else "",
    ]
    if any(notes):
        axes.set_title("; ".join(note for note in notes if note), fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    title(figure, "Anytime prediction: early-exit accuracy vs. cost", caption)
    return figure


def plot_anytime(
    report: AnytimeReport,
    path: str | Path,
    *,
    split: str = "",
    caption: str = "",
    guaranteed: GuaranteedResult | None = None,
) -> Path:
    """Early-exit accuracy against average GFLOPs per sample, each classifier alone as a point, each
    budget threshold (fitted on validation, reported here) with a marker of its own, and the
    guaranteed threshold (``guaranteed``) where it was checked."""
    return save_figure(_build_anytime(report, split=split, caption=caption, guaranteed=guaranteed), path)


# One colour and marker per exit rule, in the order of anytime.EXIT_RULES.
RULE_STYLES = [("tab:blue", "o"), ("tab:orange", "s"), ("tab:green", "D"), ("tab:red", "^")]


def _build_exit_rules(report: AnytimeReport, *, split: str = "", caption: str = "") -> Figure:
    figure = new_figure(6.4, 4.6)
    axes = figure.subplots()
    for index, (rule, result) in enumerate(report.rules.items()):
        colour, marker = RULE_STYLES[index % len(RULE_STYLES)]
        chosen = " (the served rule)" if rule == report.rule else ""
        axes.plot(
            *_sweep_line(result.curve), "-", color=colour, linewidth=2.2 if chosen else 1.4, label=f"{rule}{chosen}"
        )
        fitted = [
            (fit.gflops, fit.accuracy)
            for fit in result.budgets
            if fit.feasible and fit.gflops is not None and fit.accuracy is not None  # (set together)
        ]
        if fitted:  # each budget's threshold, fitted on val, reported on this split
            axes.scatter(
                [gflops for gflops, _ in fitted],
                [100 * accuracy for _, accuracy in fitted],
                marker=marker,
                s=50,
                color=colour,
                edgecolors="black",
                zorder=4,
            )
    for budget in sorted({fit.budget for result in report.rules.values() for fit in result.budgets}):
        axes.axvline(budget, color="grey", linestyle=":", linewidth=1)
    axes.scatter(
        [report.costs.main_only],
        [100 * report.classifier_accuracy[-1]],
        marker="*",
        s=120,
        color="black",
        zorder=5,
        label="main output alone (no exit head)",
    )
    axes.margins(x=0.08, y=0.1)
    axes.set(xlabel="average GFLOPs per image", ylabel="top-1 accuracy (%)")
    notes = [
        f"{split_name(split)} split" if split else "",
        f"markers: each budget's threshold (dotted), fitted on {split_name(report.fit_split)}"
        if report.fit_split and any(result.budgets for result in report.rules.values())
        else "",
    ]
    if any(notes):
        axes.set_title("; ".join(note for note in notes if note), fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right", title="exit rule", title_fontsize="small")
    title(figure, "Exit rules: early-exit accuracy vs. cost", caption)
    return figure


def plot_exit_rules(report: AnytimeReport, path: str | Path, *, split: str = "", caption: str = "") -> Path:
    """Every exit rule's accuracy against average GFLOPs per image on one figure (the served rule's
    line thicker), each rule's budget thresholds (fitted on validation, reported here) as markers in
    its colour, and the main output alone."""
    return save_figure(_build_exit_rules(report, split=split, caption=caption), path)


def describe_layer(layer: str) -> str:
    """``"Z_main"`` -> ``"main output logits (Z_main)"``; the keys of
    :func:`eed.metrics.rdm.layer_activations`: F_ = pooled features before the FC layer, Z_ = logits."""
    kind, _, name = layer.partition("_")
    what = {"F": "features before the FC layer", "Z": "logits"}.get(kind)
    if what is None or not name:
        return layer
    owner = "main output" if name == "main" else (f"exit {name[4:]}" if name.startswith("exit") else name)
    return f"{owner} {what} ({layer})"


def _ratio_text(summary: object) -> str:
    ratio = getattr(summary, "ratio", None)
    return "between/within = n/a" if ratio is None else f"between/within = {ratio:.2f}"


def _build_rdms(
    result: RdmResult, *, class_names: Sequence[str] | None = None, split: str = "", caption: str = ""
) -> Figure:
    layers = list(result.rdms)
    figure = new_figure(4.0 * len(layers) + 1.0, 8.4)
    panels = figure.subplots(2, len(layers), squeeze=False)
    image = None
    for column, layer in enumerate(layers):
        for row, (rdm, labels, summary, what) in enumerate(
            (
                (result.rdms[layer], result.labels, result.summaries.get(layer), f"{len(result.labels)} samples"),
                (
                    result.subset_rdms[layer],
                    result.subset_labels,
                    result.subset_summaries.get(layer),
                    f"{len(result.subset_classes)} classes, {len(result.subset_labels)} samples",
                ),
            )
        ):
            axes = panels[row][column]
            image = axes.imshow(rdm.numpy(), cmap="viridis", vmin=0.0, vmax=2.0, interpolation="nearest")
            # Thin lines where the class changes show the blocks.
            boundaries = (labels[1:] != labels[:-1]).nonzero().flatten().tolist()
            if len(boundaries) <= 20:
                for boundary in boundaries:
                    axes.axhline(boundary + 0.5, color="white", linewidth=0.4)
                    axes.axvline(boundary + 0.5, color="white", linewidth=0.4)
            axes.set_title(f"{describe_layer(layer)}\n{what}; {_ratio_text(summary)}", fontsize="medium")
            axes.set(xlabel="samples, sorted by class", ylabel="samples, sorted by class")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 1 and class_names is not None and len(labels):
                # One tick at the middle of each class block, named.
                edges = [0, *[b + 1 for b in boundaries], len(labels)]
                centers = [(start + end - 1) / 2 for start, end in pairwise(edges)]
                names = [
                    class_names[int(labels[start])]
                    if int(labels[start]) < len(class_names)
                    else str(int(labels[start]))
                    for start in edges[:-1]
                ]
                axes.set_xticks(centers, names, rotation=90, fontsize="small")
                axes.set_yticks(centers, names, fontsize="small")
    if image is not None:
        figure.colorbar(image, ax=panels, shrink=0.8, label="dissimilarity: 1 - Pearson r")
    where = f", {split_name(split)} split" if split else ""
    title(
        figure,
        f"Representational dissimilarity matrices (Fig. 4{where}): top all samples, bottom a class "
        "subset;\ndark diagonal blocks = class-specific; between/within = mean between-class / "
        "within-class dissimilarity",
        caption,
    )
    return figure


def plot_rdms(
    result: RdmResult,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    split: str = "",
    caption: str = "",
) -> Path:
    """Fig. 4: one column per layer; top row all samples, bottom row the class subset (class
    names as ticks when given). Samples are sorted by class, so same-class blocks sit on the
    diagonal; each title gives the summary's between/within ratio."""
    return save_figure(_build_rdms(result, class_names=class_names, split=split, caption=caption), path)


def _build_comparison(table: ComparisonTable, *, caption: str = "") -> Figure:
    columns, rows = table.columns, table.rows
    width_inches = max(6.4, 1.1 * len(columns) + 3.5)
    # Under the bars, a panel of their own for the row labels (one per line) and the shared settings (often
    # hundreds of characters, wrapped to the canvas), sized to what it holds: beside the bars, long labels
    # would take a third of the canvas, and a title cannot hold the settings.
    settings = _wrapped(table.constant_line(), width_inches, size=6.5) if table.constant else ""
    panel_inches = 0.25 * len(rows) + 0.14 * (settings.count("\n") + 1 if settings else 0) + 0.35
    figure = new_figure(width_inches, 4.4 + panel_inches)
    axes, panel = figure.subplots(2, 1, height_ratios=[4.4, panel_inches])
    width = 0.8 / max(len(rows), 1)
    for index, row in enumerate(rows):
        offset = (index - (len(rows) - 1) / 2) * width
        xs, means, error_xs, error_means, errors = [], [], [], [], []
        for position, column in enumerate(columns):
            cell = row.cells.get(column)
            if cell is None:
                continue
            xs.append(position + offset)
            means.append(100 * cell.mean)
            if cell.std is not None:  # a sample std needs n >= 2
                error_xs.append(position + offset)
                error_means.append(100 * cell.mean)
                errors.append(100 * cell.std)
        axes.bar(xs, means, width=width * 0.95, label=f"{row.label or 'run'} (n={row.n})")
        if errors:
            axes.errorbar(error_xs, error_means, yerr=errors, fmt="none", ecolor="black", elinewidth=1, capsize=3)
    axes.set_xticks(list(range(len(columns))), [table.column_title(column) for column in columns])
    axes.set(xlabel="classifier", ylabel="top-1 accuracy (%)")
    axes.set_ylim(0, min(100.0, axes.get_ylim()[1] * 1.05))
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    counts = sorted({row.n for row in rows})
    if counts and counts[-1] >= 2:
        spread = (
            f"mean ± sample std over {counts[0]} seeds"
            if len(counts) == 1
            else "mean ± sample std over n seeds (n per row in the legend; none for n = 1)"
        )
    else:
        spread = "one run per row, no error bars"
    axes.set_title(_wrapped(f"{table.meaning[0].upper()}{table.meaning[1:]}; {spread}", width_inches), fontsize="small")
    panel.axis("off")
    panel.legend(
        *axes.get_legend_handles_labels(), loc="upper center", fontsize="small", frameon=False, borderaxespad=0
    )
    if settings:
        panel.text(0.5, 0, settings, ha="center", va="bottom", fontsize=6.5, transform=panel.transAxes)
    title(figure, "Accuracy of each classifier per configuration", caption)
    return figure


def _wrapped(text: str, width_inches: float, size: float = 8.0) -> str:
    """``text`` broken into lines that fit ``width_inches`` at a font of ``size`` points (about 0.55 em
    per character on average, with a margin)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=max(20, int(0.85 * width_inches * 72 / (0.55 * size)))))


def plot_comparison(table: ComparisonTable, path: str | Path, *, caption: str = "") -> Path:
    """Grouped bars: one group per classifier column, one bar per table row (mean; error bars =
    sample std over seeds, only where n >= 2)."""
    return save_figure(_build_comparison(table, caption=caption), path)


def _build_differences(
    found: Sequence[RowDifference], columns: Sequence[str], titles: Sequence[str], *, caption: str = ""
) -> Figure:
    """One marker per compared row and output (``columns``, named ``titles``) at the difference, its
    interval as an error bar (hollow marker: no interval); the 0 line is "no difference"."""
    width_inches = max(6.4, 1.1 * len(columns) + 3.5)
    figure = new_figure(width_inches, 4.4 + 0.22 * len(found))  # the legend, one line per row, below
    axes = figure.subplots()
    step = 0.8 / max(len(found), 1)
    for index, item in enumerate(found):
        offset = (index - (len(found) - 1) / 2) * step
        color = f"C{index % 10}"
        label = f"{item.row.label} − {item.against} (n={item.n})"
        for position, column in enumerate(columns):
            difference = item.outputs.get(column)
            if difference is None:
                continue
            x, y = position + offset, 100 * difference.mean
            if difference.low is not None and difference.high is not None:  # (difference.has_interval)
                error = [[y - 100 * difference.low], [100 * difference.high - y]]
                axes.errorbar([x], [y], yerr=error, fmt="o", color=color, capsize=3, label=label)
            else:
                axes.plot([x], [y], "o", mfc="none", color=color, label=label)
            label = "_nolegend_"
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(list(range(len(columns))), list(titles))
    axes.set(xlabel="classifier", ylabel="top-1 difference (percentage points)")
    axes.grid(axis="y", alpha=0.3)
    confidence = next((d.confidence for item in found for d in item.outputs.values()), 0.95)
    axes.set_title(
        _wrapped(
            f"{100 * confidence:.0f} % interval: Student t on paired per-seed differences (Welch "
            "without shared seeds); hollow: no interval",
            width_inches,
        ),
        fontsize="small",
    )
    if found:
        figure.legend(fontsize="small", loc="outside lower center")
    title(figure, "Difference from the reference row (row − reference)", caption)
    return figure


def plot_differences(
    found: Sequence[RowDifference],
    columns: Sequence[str],
    titles: Sequence[str],
    path: str | Path,
    *,
    caption: str = "",
) -> Path:
    """The differences of ``eed compare --against`` per output, with their confidence intervals."""
    return save_figure(_build_differences(found, columns, titles, caption=caption), path)


def _own_width(arch: str | None) -> int | None:
    if arch is None:
        return None
    from eed.models.registry import get_spec  # late: the registry imports every model module

    try:
        return get_spec(arch).default_width
    except (KeyError, ValueError):
        return None


def _build_flops(profile: FlopsProfile, *, caption: str = "") -> Figure:
    figure = new_figure(7.2, 4.4)
    axes = figure.subplots()
    names = [output.name for output in profile.outputs]
    bars = axes.bar(names, [output.gflops for output in profile.outputs], color="tab:blue")
    axes.bar_label(
        bars,
        padding=2,
        fontsize="small",
        labels=[
            f"{output.gflops:.3g} GFLOPs\n{percent:.0f}% of main"
            for output, percent in zip(profile.outputs, profile.percent_of_main())
        ],
    )
    axes.set(xlabel="output", ylabel="GFLOPs per image")
    axes.margins(y=0.2)
    width = "own width" if profile.width is None else f"width {profile.width}"
    details = [f"{profile.num_classes} classes"] if profile.num_classes is not None else []
    details.append(f"{profile.total_params / 1e6:.2f} M parameters")
    own = _own_width(profile.arch)
    if profile.width is not None and own is not None and own != profile.width:
        # Without it, 0.07 GFLOPs at width 16 looks wrong next to the paper's 1.11 at width 64.
        details.append(f"its own width is {own}; GFLOPs grow about as width²")
    axes.set_title(", ".join(details), fontsize="medium")
    title(
        figure,
        f"Cost of each output (Table III): {profile.arch or 'model'}, {width}, "
        f"{profile.input_size}x{profile.input_size} input",
        caption,
    )
    return figure


def plot_flops(profile: FlopsProfile, path: str | Path, *, caption: str = "") -> Path:
    """Bar chart of the GFLOPs needed for each output, each bar labelled with its GFLOPs and % of
    the main output's; the title gives the architecture, width and input size."""
    return save_figure(_build_flops(profile, caption=caption), path)
