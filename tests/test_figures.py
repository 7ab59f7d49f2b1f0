"""The figures as a reader gets them: PNG at print resolution plus a deterministic SVG, integer
epoch ticks, every axis labelled and every figure titled, the caption shown, agreement in % of
each row, comparison as grouped bars with n and honest error bars, FLOPs labelled with GFLOPs
and the width, RDM panels explained."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import matplotlib.image
import pytest
import torch
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.lines import Line2D
from PIL import Image

from eed.config import Config
from eed.metrics.anytime import ClassifierCosts, analyze, threshold_grid
from eed.metrics.classification import agreement_counts
from eed.metrics.collected import Collected
from eed.metrics.flops import arch_profile
from eed.metrics.rdm import compute_rdms, select_samples
from eed.metrics.summary import summarize
from eed.reporting import canvas, figures, training_curves
from eed.reporting.comparison import Cell, ComparisonRow, ComparisonTable
from eed.reporting.files import write_evaluation_outputs, write_flops_outputs, write_rdm_outputs
from eed.reporting.records import figure_caption

NAMES = ["exit1", "exit2", "exit3", "main"]
COLUMNS = ["exit1", "exit2", "exit3", "main", "ensemble"]
CAPTION = "eed · resnet18 width 16 · cifar100 · seed 0 · cpu scale"
CLASS_NAMES = [f"class_{i:02d}" for i in range(6)]


@pytest.fixture(scope="module")
def logits_labels() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (240,), generator=generator)
    logits = 2 * torch.randn(4, 240, 6, generator=generator)
    for i in range(4):
        logits[i, torch.arange(240), labels] += 0.8 * (i + 1)
    return logits, labels


@pytest.fixture(scope="module")
def report(logits_labels):
    logits, labels = logits_labels
    result = summarize(Collected(logits, labels), NAMES, "test")
    costs = ClassifierCosts.from_parts([0.2, 0.2, 0.2, 0.3], [0.02, 0.02, 0.01], 0.001)
    result.anytime = analyze(
        logits,
        labels,
        costs,
        threshold_grid(11),
        NAMES,
        budgets=[0.1, 0.5],
        fit_logits=logits,
        fit_labels=labels,
        fit_split="val",
    )
    return result


@pytest.fixture(scope="module")
def rdm_result(logits_labels):
    logits, labels = logits_labels
    indices = select_samples(labels, 60, seed=0)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(60, 16, generator=generator) + 2 * torch.randn(6, 16, generator=generator)[labels[indices]]
    return compute_rdms(
        {"F_main": features, "Z_main": logits[-1][indices]}, labels[indices], indices, subset_class_count=3, seed=0
    )


@pytest.fixture(scope="module")
def profile():
    return arch_profile("resnet18", num_classes=100, width=16)


def history(epochs: int = 3) -> dict[str, list[tuple[int, float]]]:
    prefixes = {"train": "train/acc_", "val": "val/acc_", "test": "test/epoch_acc_"}
    return {
        f"{prefix}{name}": [(epoch, 0.1 * epoch + 0.01 * i) for epoch in range(1, epochs + 1)]
        for prefix in prefixes.values()
        for i, name in enumerate([*NAMES, "ensemble"])
    }


def table(seeds: dict[str, int]) -> ComparisonTable:
    """One row per method with ``seeds[method]`` runs."""
    rows = []
    for index, (method, n) in enumerate(seeds.items()):
        cells = {
            column: Cell([0.5 + 0.05 * j + 0.01 * index + 0.002 * s for s in range(n)])
            for j, column in enumerate(COLUMNS)
        }
        rows.append(
            ComparisonRow(
                {"method": method, "model.arch": "resnet18"},
                cells,
                [f"{method}{s}" for s in range(n)],
                [str(s) for s in range(n)],
                label=method,
            )
        )
    return ComparisonTable("test", list(COLUMNS), rows, settings=["model.arch", "method"])


def drawn(figure):
    figure.canvas.draw()
    return figure


def all_text(figure) -> str:
    texts = [figure.get_suptitle()]
    for axes in figure.axes:
        texts += [axes.get_title(), axes.get_xlabel(), axes.get_ylabel()]
        texts += [text.get_text() for text in axes.texts]
    return "\n".join(texts)


def legend_texts(figure) -> list[str]:
    legends = list(figure.legends) + [axes.get_legend() for axes in figure.axes if axes.get_legend()]
    return [text.get_text() for legend in legends for text in legend.get_texts()]


def plot_axes(figure):
    """The axes that plot data: not colour bars, nor a panel that only holds a legend and text (axis off)."""
    return [axes for axes in figure.axes if axes.get_label() != "<colorbar>" and axes.axison]


def builders(report, rdm_result, profile):
    return {
        "training_curves": lambda caption: training_curves._build_main_vs_ensemble(history(), caption=caption),
        "stability": lambda caption: training_curves.build_stability(history(), caption=caption),
        "agreement": lambda caption: figures._build_agreement(
            report.agreement, NAMES[:-1], split="test", caption=caption
        ),
        "anytime": lambda caption: figures._build_anytime(report.anytime, split="test", caption=caption),
        "exit_rules": lambda caption: figures._build_exit_rules(report.anytime, split="test", caption=caption),
        "rdm": lambda caption: figures._build_rdms(rdm_result, class_names=CLASS_NAMES, caption=caption),
        "comparison": lambda caption: figures._build_comparison(table({"eed": 3, "branchynet": 1}), caption=caption),
        "flops": lambda caption: figures._build_flops(profile, caption=caption),
    }


# --------------------------------------------------------------------------- every figure


def test_every_figure_is_titled_labelled_and_shows_the_caption(report, rdm_result, profile):
    for name, build in builders(report, rdm_result, profile).items():
        figure = drawn(build(CAPTION))
        assert figure.get_suptitle().strip() and CAPTION in figure.get_suptitle(), name
        for axes in plot_axes(figure):
            assert axes.get_xlabel() and axes.get_ylabel(), f"{name}: unlabelled axis"
        without = build("")
        assert CAPTION not in all_text(without), name


def test_png_at_print_resolution_and_a_parseable_svg_beside_it(tmp_path, profile):
    figure = figures._build_flops(profile)
    written = canvas.save_figure_files(figure, tmp_path / "flops.png")
    assert written == [tmp_path / "flops.svg", tmp_path / "flops.png"]
    assert canvas.DPI >= 150
    width, height = figure.get_size_inches()
    image = matplotlib.image.imread(tmp_path / "flops.png")
    assert image.shape[:2] == (round(height * canvas.DPI), round(width * canvas.DPI))
    with Image.open(tmp_path / "flops.png") as png:
        assert png.info["dpi"][0] == pytest.approx(canvas.DPI, abs=1)
    root = ElementTree.parse(tmp_path / "flops.svg").getroot()
    assert root.tag.endswith("svg")
    # save_figure keeps returning the PNG, and saved_files names what it wrote.
    png = canvas.save_figure(figure, tmp_path / "again" / "flops.png")
    assert png == tmp_path / "again" / "flops.png" and canvas.saved_files(png) == [png.with_suffix(".svg"), png]
    assert canvas.saved_files(None) == []


def test_svg_is_byte_identical_across_saves_and_rebuilds(tmp_path, profile, report):
    for name, build in (
        ("flops", lambda: figures._build_flops(profile, caption=CAPTION)),
        ("agreement", lambda: figures._build_agreement(report.agreement, NAMES[:-1], split="test")),
    ):
        first = canvas.save_figure_files(build(), tmp_path / "a" / f"{name}.png")[0].read_bytes()
        second = canvas.save_figure_files(build(), tmp_path / "b" / f"{name}.png")[0].read_bytes()
        assert first == second, name
        assert b"<dc:date>" not in first


# --------------------------------------------------------------------------- training curves


@pytest.mark.parametrize("build", [training_curves._build_main_vs_ensemble, training_curves.build_stability])
def test_epoch_ticks_are_integers(build):
    figure = drawn(build(history(3)))
    for axes in plot_axes(figure):
        labels = [label.get_text() for label in axes.get_xticklabels() if label.get_text()]
        assert labels and all(re.fullmatch(r"\d+", text) for text in labels), labels
        assert axes.get_xlabel() == "epoch"


def test_stability_says_what_it_shows_one_panel_per_split(tmp_path):
    figure = drawn(training_curves.build_stability(history()))
    assert "every classifier" in figure.get_suptitle() and "Fig. 5" in figure.get_suptitle()
    assert [axes.get_title() for axes in plot_axes(figure)] == ["training split", "validation split", "test split"]
    files = training_curves.plot_training_curves(history(), tmp_path, caption=CAPTION)
    assert {f.name for f in files} == {"training_curves.png", "training_curves.svg", "stability.png", "stability.svg"}
    assert all(f.exists() for f in files)
    assert training_curves.plot_training_curves({"train/loss": [(1, 2.0)]}, tmp_path / "none") == []


# --------------------------------------------------------------------------- evaluation figures


def test_agreement_rows_are_percent_of_the_row_with_counts_and_a_colour_bar(report):
    figure = drawn(figures._build_agreement(report.agreement, NAMES[:-1], split="test"))
    panels = plot_axes(figure)
    assert len(panels) == 3 and len(figure.axes) == 4  # one colour bar
    for axes, matrix in zip(panels, report.agreement.tolist()):
        cells = {}
        for text in axes.texts:
            percent, count = re.fullmatch(r"([\d.]+)%\n\(([\d,]+)\)", text.get_text()).groups()
            x, y = text.get_position()
            cells[(round(y), round(x))] = (float(percent), int(count.replace(",", "")))
        assert len(cells) == 4
        for row in range(2):
            assert sum(cells[(row, column)][0] for column in range(2)) == pytest.approx(100.0, abs=0.11)
            assert [cells[(row, column)][1] for column in range(2)] == matrix[row]
        image = axes.get_images()[0]
        assert image.get_clim() == (0.0, 100.0)
    assert "test split, 240 images" in figure.get_suptitle()
    assert figures.agreement_percent([[3, 1], [0, 0]]) == [[75.0, 25.0], [None, None]]


def test_agreement_row_without_images_is_said_not_divided_by_zero():
    agreement = agreement_counts(torch.tensor([[[5.0, 0.0]], [[5.0, 0.0]]]), torch.tensor([0]))
    figure = drawn(figures._build_agreement(agreement, ["exit1"]))
    texts = [text.get_text() for text in plot_axes(figure)[0].texts]
    assert texts.count("no images") == 2 and "100.0%\n(1)" in texts


def test_anytime_labels_stand_off_their_points_unclipped(report):
    figure = drawn(figures._build_anytime(report.anytime, split="test"))
    axes = plot_axes(figure)[0]
    annotations = [text for text in axes.texts if text.get_text() in NAMES]
    assert [text.get_text() for text in annotations] == NAMES
    for text in annotations:
        assert not text.get_clip_on() and text.get_annotation_clip() is False
        assert text.get_anncoords() == "offset points" and all(abs(v) >= 5 for v in text.xyann)
    assert axes.margins()[0] > 0.05 and axes.margins()[1] > 0.05
    assert "test split" in axes.get_title() and "validation" in axes.get_title()


def test_rdm_panels_explain_layers_ratios_and_classes(rdm_result):
    figure = drawn(figures._build_rdms(rdm_result, class_names=CLASS_NAMES, split="test"))
    panels = plot_axes(figure)
    assert len(panels) == 4 and len(figure.axes) == 5
    titles = [axes.get_title() for axes in panels]
    assert "main output logits (Z_main)" in titles[1] and "features" in titles[0] and "(F_main)" in titles[0]
    for axes, (layer, summaries) in zip(
        panels,
        [
            ("F_main", rdm_result.summaries),
            ("Z_main", rdm_result.summaries),
            ("F_main", rdm_result.subset_summaries),
            ("Z_main", rdm_result.subset_summaries),
        ],
    ):
        assert f"between/within = {summaries[layer].ratio:.2f}" in axes.get_title()
        assert axes.get_xlabel() == axes.get_ylabel() == "samples, sorted by class"
    subset_names = [CLASS_NAMES[c] for c in rdm_result.subset_classes]
    for axes in panels[2:]:
        assert [label.get_text() for label in axes.get_xticklabels()] == subset_names
        assert [label.get_text() for label in axes.get_yticklabels()] == subset_names
    assert all(not axes.get_xticklabels() for axes in panels[:2])
    # Without class names, no tick labels.
    plain = drawn(figures._build_rdms(rdm_result))
    assert all(not axes.get_xticklabels() for axes in plot_axes(plain))
    assert figures.describe_layer("F_exit2") == "exit 2 features before the FC layer (F_exit2)"
    assert figures.describe_layer("odd") == "odd"


def test_comparison_is_grouped_bars_with_n_in_the_legend_and_no_error_bar_for_one_run():
    single = drawn(figures._build_comparison(table({"eed": 1, "branchynet": 1})))
    axes = plot_axes(single)[0]
    bars = [c for c in axes.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(len(c) == len(COLUMNS) for c in bars)
    assert not any(isinstance(c, ErrorbarContainer) for c in axes.containers) and not axes.collections
    # No line joins the categorical classifiers.
    assert not [line for line in axes.get_lines() if isinstance(line, Line2D) and len(line.get_xdata()) > 1]
    assert legend_texts(single) == ["eed (n=1)", "branchynet (n=1)"]
    assert "std" not in axes.get_title() and "Test accuracy of best.pt" in axes.get_title()
    assert [label.get_text() for label in axes.get_xticklabels()] == ["Exit 1", "Exit 2", "Exit 3", "Main", "Ensemble"]
    # Bars of one group sit side by side around the classifier's tick.
    first, second = (c.patches[0] for c in bars)
    assert first.get_x() + first.get_width() <= second.get_x() + 1e-9
    assert first.get_x() < 0 < second.get_x() + second.get_width()

    mixed = drawn(figures._build_comparison(table({"eed": 3, "branchynet": 1})))
    axes = plot_axes(mixed)[0]
    errorbars = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 1  # eed only
    segments = errorbars[0].lines[2][0].get_segments()
    assert len(segments) == len(COLUMNS)
    expected_std = 100 * table({"eed": 3}).rows[0].cells["main"].std
    heights = sorted(abs(segment[1][1] - segment[0][1]) for segment in segments)
    assert heights[0] == pytest.approx(2 * expected_std)
    assert legend_texts(mixed) == ["eed (n=3)", "branchynet (n=1)"]
    assert "mean ± sample std over n seeds" in axes.get_title()
    same_n = drawn(figures._build_comparison(table({"eed": 3, "branchynet": 3})))
    assert "mean ± sample std over 3 seeds" in plot_axes(same_n)[0].get_title()


def test_flops_bars_carry_gflops_and_percent_and_the_title_the_width(profile):
    figure = drawn(figures._build_flops(profile))
    axes = plot_axes(figure)[0]
    labels = [text.get_text() for text in axes.texts]
    assert len(labels) == len(profile.outputs)
    for label, output, percent in zip(labels, profile.outputs, profile.percent_of_main()):
        assert f"{output.gflops:.3g} GFLOPs" in label and f"{percent:.0f}% of main" in label
    title = figure.get_suptitle()
    assert "resnet18" in title and "width 16" in title and "32x32" in title
    assert "own width is 64" in axes.get_title()
    full = drawn(figures._build_flops(arch_profile("resnet18", num_classes=100)))
    assert "width 64" in full.get_suptitle() and "own width" not in plot_axes(full)[0].get_title()


# --------------------------------------------------------------------------- files.py


def test_writers_return_png_and_svg_of_every_figure(tmp_path, report, rdm_result, profile):
    evaluation = write_evaluation_outputs(report, tmp_path / "eval", caption=CAPTION)
    assert [f.name for f in evaluation] == [
        "metrics.json",
        "agreement.svg",
        "agreement.png",
        "anytime.csv",
        "anytime.svg",
        "anytime.png",
        "exit_rules.svg",
        "exit_rules.png",
    ]
    flops = write_flops_outputs(profile, tmp_path / "flops", caption=CAPTION)
    assert [f.name for f in flops] == ["flops.json", "flops.svg", "flops.png"]
    rdm = write_rdm_outputs(rdm_result, tmp_path / "rdm", caption=CAPTION, class_names=CLASS_NAMES, split="test")
    assert [f.name for f in rdm] == ["rdm.json", "rdm.svg", "rdm.png"]
    for path in evaluation + flops + rdm:
        assert path.exists()
        if path.suffix == ".svg":
            ElementTree.parse(path)


def test_figure_caption_from_the_config():
    assert figure_caption(Config()) == CAPTION
    config = Config.model_validate(
        {"method": "byot", "seed": 3, "scale": "paper", "model": {"arch": "vgg19"}, "data": {"dataset": "cifar10"}}
    )
    assert figure_caption(config) == "byot · vgg19 width 64 · cifar10 · seed 3 · paper scale"
    config = Config.model_validate({"model": {"width": 32}})
    assert figure_caption(config) == "eed · resnet18 width 32 · cifar100 · seed 0 · cpu scale"


def test_anytime_tells_each_budget_apart_and_shows_the_guaranteed_threshold(report, logits_labels):
    from eed.metrics.guarantee import check_guarantee, fit_guaranteed_threshold
    from eed.metrics.summary import GuaranteedResult

    logits, labels = logits_labels
    costs = report.anytime.costs.anytime
    fit = fit_guaranteed_threshold(logits, labels, threshold_grid(11), 0.05, 0.1, costs)
    guaranteed = GuaranteedResult(fit, check_guarantee(fit, logits, labels, costs), calibrated=False)
    axes = plot_axes(drawn(figures._build_anytime(report.anytime, split="test", guaranteed=guaranteed)))[0]
    labels_shown = axes.get_legend_handles_labels()[1]
    assert "budget 0.1 GFLOPs: no τ fits" in labels_shown
    assert any(label.startswith("budget 0.5 GFLOPs (dotted): τ ") for label in labels_shown)
    (drop,) = [label for label in labels_shown if label.startswith("drop ≤ 5 pt")]
    assert drop.endswith("held" if guaranteed.check["held"] else "failed")
    budget_lines = [line for line in axes.lines if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert len({line.get_color() for line in budget_lines}) == len(budget_lines) >= 2  # one colour per budget


def test_exit_rules_draws_each_rule_with_its_budget_points(report):
    anytime = report.anytime
    axes = plot_axes(drawn(figures._build_exit_rules(anytime, split="test")))[0]
    labels_shown = axes.get_legend_handles_labels()[1]
    assert labels_shown[:4] == ["confidence (the served rule)", "entropy", "margin", "patience"]
    assert "main output alone (no exit head)" in labels_shown
    curves = [line for line in axes.lines if line.get_linestyle() == "-"]
    assert len(curves) == 4 and len({line.get_color() for line in curves}) == 4
    assert curves[0].get_linewidth() > curves[1].get_linewidth()  # the served rule stands out
    for line, result in zip(curves, anytime.rules.values()):  # each curve is its rule's sweep up to tau = 1
        within = result.curve.thresholds <= 1.0
        assert sorted(line.get_xdata()) == sorted(result.curve.gflops[within].tolist())
    feasible = sum(fit.feasible for result in anytime.rules.values() for fit in result.budgets)
    budget_markers = [collection for collection in axes.collections if len(collection.get_offsets())][:-1]
    assert sum(len(collection.get_offsets()) for collection in budget_markers) == feasible > 0
    assert len([line for line in axes.lines if line.get_linestyle() == ":"]) == 2  # one per budget
    assert "test split" in axes.get_title() and "validation" in axes.get_title()


def test_sweep_lines_leave_out_the_main_output_alone_and_name_it(report, logits_labels):
    """The point above 1 (the main output alone, no exit head) is cheaper than tau = 1 (every head on the
    way): in the line it drew a spike back; it is drawn as its own point, and a guarantee that chose it
    says so, not "tau 1.00"."""
    from eed.metrics.guarantee import GuaranteedThreshold, check_guarantee
    from eed.metrics.summary import GuaranteedResult

    anytime = report.anytime
    within = int((anytime.curve.thresholds <= 1.0).sum())
    assert within == len(anytime.curve.thresholds) - 1
    main_alone = anytime.costs.main_only
    axes = plot_axes(drawn(figures._build_anytime(anytime, split="test")))[0]
    (line,) = [line for line in axes.lines if line.get_linestyle() == "-"]
    assert len(line.get_xdata()) == within and main_alone not in list(line.get_xdata())
    assert list(line.get_xdata()) == sorted(line.get_xdata())
    rules = plot_axes(drawn(figures._build_exit_rules(anytime, split="test")))[0]
    for curve in [line for line in rules.lines if line.get_linestyle() == "-"]:
        assert len(curve.get_xdata()) == within and main_alone not in list(curve.get_xdata())
    logits, labels = logits_labels
    fit = GuaranteedThreshold(
        threshold=1.5,
        feasible=True,
        max_drop=0.01,
        delta=0.1,
        val_drop=0.0,
        val_bound=0.0,
        val_accuracy=0.2,
        val_main_accuracy=0.2,
        val_gflops=main_alone,
        thresholds_tested=3,
        val_samples=len(labels),
        main_only_gflops=main_alone,
    )
    guaranteed = GuaranteedResult(fit, check_guarantee(fit, logits, labels, anytime.costs.anytime), calibrated=False)
    shown = plot_axes(drawn(figures._build_anytime(anytime, split="test", guaranteed=guaranteed)))[0]
    assert "drop ≤ 1 pt (main output alone): held" in shown.get_legend_handles_labels()[1]
