"""The Rich tables the commands print: an evaluation report, Table III of one architecture,
the backbone registry and the RDM summaries (the comparison table draws itself,
:meth:`eed.reporting.comparison.ComparisonTable.rich_table`). Accuracies show in percent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from eed.metrics.flops import BackboneSummary, FlopsProfile
    from eed.metrics.rdm import RdmResult
    from eed.metrics.summary import EvaluationReport


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def evaluation_tables(report: EvaluationReport) -> list[Table]:
    """Rich tables: per-output metrics, exit/main agreement, early-exit budgets."""
    costs = report.anytime.costs.standalone if report.anytime else None
    outputs = Table(title=f"{report.split} split: {report.num_samples} samples (accuracy, ECE in %)")
    for column in ("output", "top-1", "top-5", "ECE", "running ens. top-1", "GFLOPs"):
        outputs.add_column(column, justify="left" if column == "output" else "right")
    best = max(o.top1 for o in report.outputs)
    for i, output in enumerate(report.outputs):
        running = _pct(report.running[i].top1) if i < len(report.running) else ""
        gflops = f"{costs[i]:.4f}" if costs and i < len(costs) else ""
        top1 = _pct(output.top1)
        outputs.add_row(
            output.name,
            f"[bold]{top1}[/]" if output.top1 == best else top1,
            _pct(output.top5),
            _pct(output.ece),
            running,
            gflops,
        )
    tables = [outputs]
    if len(report.names) > 1:
        agreement = Table(title="Exit vs main (Fig. 2): sample counts")
        for column in ("exit", "both correct", "exit only", "main only", "both wrong"):
            agreement.add_column(column, justify="left" if column == "exit" else "right")
        for name, matrix in zip(report.names, report.agreement.tolist()):
            agreement.add_row(name, *(str(v) for v in (matrix[0][0], matrix[0][1], matrix[1][0], matrix[1][1])))
        tables.append(agreement)
    if report.anytime is not None and report.anytime.budgets:
        fit_split = report.anytime.fit_split
        budgets = Table(title=f"Early exit within a budget (threshold fitted on {fit_split})")
        columns = ["budget GFLOPs", "threshold", f"{report.split} GFLOPs", f"{report.split} top-1"]
        show_fit = fit_split != report.split  # the fitting split's accuracy, when it is another one
        for column in columns + ([f"{fit_split} top-1"] if show_fit else []):
            budgets.add_column(column, justify="right")
        for fit in report.anytime.budgets:
            row = [
                f"{fit.budget:g}",
                "infeasible" if fit.threshold is None else f"{fit.threshold:.3f}",
                "—" if fit.gflops is None else f"{fit.gflops:.4f}",
                _pct(fit.accuracy),
            ]
            budgets.add_row(*row, *([_pct(fit.fit_accuracy)] if show_fit else []))
        tables.append(budgets)
        if len(report.anytime.rules) > 1:
            tables.append(exit_rules_table(report))
    if report.calibration is not None:
        tables.append(calibration_table(report))
    if report.guaranteed is not None:
        tables.append(guaranteed_table(report))
    return tables


def exit_rules_table(report: EvaluationReport) -> Table:
    """Per exit rule, each budget's threshold (fitted on val) with its top-1 and GFLOPs on the report's split."""
    anytime = report.anytime
    if anytime is None:
        raise ValueError("the report has no early-exit analysis (report.anytime)")
    table = Table(
        title=f"Exit rules within each budget: {report.split} top-1 % (GFLOPs), threshold fitted on {anytime.fit_split}"
    )
    table.add_column("exit rule")
    budgets = [fit.budget for fit in anytime.budgets]
    for budget in budgets:
        table.add_column(f"≤ {budget:g} GFLOPs", justify="right")
    for rule, result in anytime.rules.items():
        cells = [
            "no τ fits" if fit.threshold is None or fit.gflops is None else f"{_pct(fit.accuracy)} ({fit.gflops:.4f})"
            for fit in result.budgets
        ]
        table.add_row(f"[bold]{rule}[/] (served)" if rule == anytime.rule else rule, *cells)
    return table


def calibration_table(report: EvaluationReport) -> Table:
    """Temperature scaling per classifier: T fitted on val, ECE (%) and NLL before and after."""
    calibration = report.calibration
    if calibration is None:
        raise ValueError("the report has no calibration (report.calibration)")
    table = Table(
        title=f"Calibration: temperature fitted on {calibration.fit_split}, "
        f"ECE (%) and NLL on {calibration.report_split}"
    )
    for column in ("classifier", "T", "ECE before", "ECE after", "NLL before", "NLL after"):
        table.add_column(column, justify="left" if column == "classifier" else "right")
    for i, name in enumerate(calibration.names):
        table.add_row(
            name,
            f"{calibration.temperatures[i]:.3f}",
            _pct(calibration.ece_before[i]),
            _pct(calibration.ece_after[i]),
            f"{calibration.nll_before[i]:.4f}",
            f"{calibration.nll_after[i]:.4f}",
        )
    return table


def guaranteed_table(report: EvaluationReport) -> Table:
    """The threshold whose accuracy drop vs the main output is guaranteed, and how it did."""
    guaranteed = report.guaranteed
    if guaranteed is None:
        raise ValueError("the report has no guaranteed threshold (report.guaranteed)")
    fit, check = guaranteed.fit, guaranteed.check
    confidence = "calibrated" if guaranteed.calibrated else "raw"
    table = Table(
        title=f"Guaranteed early exit: drop ≤ {100 * fit.max_drop:g} points with probability ≥ "
        f"{1 - fit.delta:g} (fitted on val, {fit.rule} rule on {confidence} probabilities)"
    )
    for column in ("threshold", "val drop (bound)", f"{report.split} top-1", f"{report.split} drop", "GFLOPs", "held"):
        table.add_column(column, justify="right", no_wrap=column in ("threshold", "GFLOPs"))
    threshold = (
        f"{fit.threshold:.3f}"
        if not fit.main_only
        else "main only (cheaper)"
        if fit.feasible
        else "main only (none safe)"
    )
    gflops, main_only = check.get("gflops"), check.get("main_only_gflops")
    cost = "—" if gflops is None else f"{gflops:.4f}" + (f" ({100 * gflops / main_only:.0f} %)" if main_only else "")
    table.add_row(
        threshold,
        f"{100 * fit.val_drop:.2f} ({100 * fit.val_bound:.2f})",
        _pct(check["accuracy"]),
        f"{100 * check['drop']:.2f}",
        cost,
        "yes" if check["held"] else "[bold red]no[/]",
    )
    table.caption = (
        "GFLOPs (% of the main output alone, no exit head): the cheapest option on val among the "
        "thresholds declared safe and the main output alone"
    )
    table.caption_justify = "left"
    return table


def served_table(report: EvaluationReport, settings: dict) -> Table:
    """The named thresholds a served model carries, with how they did on val, where they were fitted."""
    confidence = "calibrated" if settings.get("calibrated") else "raw"
    table = Table(
        title=f"Served model: thresholds fitted on val ({settings.get('exit_rule', 'confidence')} rule, "
        f"{confidence} probabilities)"
    )
    for column in ("name", "threshold", "val top-1", "val GFLOPs", "default"):
        table.add_column(column, justify="left" if column == "name" else "right")
    fitted = {
        f"budget_{fit.budget:g}": (fit.fit_accuracy, fit.fit_gflops)
        for fit in (report.anytime.budgets if report.anytime else [])
    }
    if report.guaranteed is not None:
        fitted["max_drop"] = (report.guaranteed.fit.val_accuracy, report.guaranteed.fit.val_gflops)
    for name, threshold in settings["thresholds"].items():
        accuracy, gflops = fitted.get(name, (None, None))
        table.add_row(
            name,
            "main only" if threshold > 1 else f"{threshold:.3f}",
            _pct(accuracy),
            "—" if gflops is None else f"{gflops:.4f}",
            "yes" if settings.get("default") == name else "",
        )
    if not isinstance(settings.get("default"), str):
        table.add_row("(default)", "main output", "", "", "yes")
    return table


def flops_table(profile: FlopsProfile) -> Table:
    """Table III for one architecture: GFLOPs, parameters and share of the main output."""
    size = profile.input_size
    table = Table(title=f"{profile.arch}: width {profile.width}, {profile.num_classes} classes, {size}x{size} input")
    for column in ("output", "GFLOPs", "params (M)", "% of main"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for output, percent in zip(profile.outputs, profile.percent_of_main()):
        table.add_row(output.name, f"{output.gflops:.3f}", f"{output.params / 1e6:.2f}", f"{percent:.1f}")
    return table


def backbones_table(rows: Sequence[BackboneSummary]) -> Table:
    """``eed models``: one row per registered backbone."""
    table = Table(title="Registered backbones", caption="params include the exits; CIFAR: 100 classes, ImageNet: 1000")
    # The name is what users type (--set model.arch=...): never cut or wrapped; the other columns give way.
    table.add_column("name", no_wrap=True, min_width=max((len(row.name) for row in rows), default=4))
    for column in ("family", "input", "exits", "width", "params (M)", "main GFLOPs"):
        table.add_column(column, justify="left" if column == "family" else "right")
    for row in rows:
        if row.error:
            table.add_row(row.name, row.family, str(row.input_size), "-", str(row.width), "-", f"[red]{row.error}[/]")
        else:
            table.add_row(
                row.name,
                row.family,
                str(row.input_size),
                str(row.num_exits),
                str(row.width),
                f"{row.params / 1e6:.2f}",
                f"{row.main_gflops:.3f}",
            )
    return table


def rdm_table(result: RdmResult, split: str) -> Table:
    """Within-class, between-class dissimilarity and their ratio, per layer."""
    table = Table(
        title=f"RDMs of {len(result.labels)} {split} samples (1 - Pearson r)",
        caption="ratio = between / within: higher = more class-specific representations",
    )
    for column in ("layer", "samples", "within", "between", "ratio"):
        table.add_column(column, justify="left" if column in ("layer", "samples") else "right")
    for scope, summaries in (("all", result.summaries), ("subset", result.subset_summaries)):
        for layer, summary in summaries.items():
            table.add_row(
                layer,
                scope,
                *("—" if v is None else f"{v:.4f}" for v in (summary.within, summary.between, summary.ratio)),
            )
    return table
