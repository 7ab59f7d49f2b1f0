"""The files the evaluate, flops and rdm stages write for DVC and people: ``metrics.json``,
``anytime.csv`` (what dvc.yaml's plot draws), ``flops.json``, ``rdm.json`` and the figures beside
them (PNG and SVG). Each writer takes a result object and returns the paths it wrote;
``caption=`` (:func:`eed.reporting.records.figure_caption`) is passed to every figure it draws.
The training run's files are :mod:`eed.reporting.records`'s."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eed.reporting.canvas import saved_files
from eed.reporting.figures import plot_agreement, plot_anytime, plot_exit_rules, plot_flops, plot_rdms
from eed.reporting.records import write_json

if TYPE_CHECKING:
    from eed.metrics.anytime import AnytimeReport
    from eed.metrics.flops import FlopsProfile
    from eed.metrics.rdm import RdmResult
    from eed.metrics.summary import EvaluationReport


def write_anytime_csv(report: AnytimeReport, path: Path) -> Path:
    """One row per threshold: threshold, gflops, top1_pct (%: ``dvc plots`` draws it for people to
    read), frac_<classifier>... (the fraction of images leaving there)."""
    rows = [
        {"threshold": row["threshold"], "gflops": row["gflops"], "top1_pct": 100 * row.pop("accuracy"), **row}
        for row in report.curve.rows()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" for key, value in row.items()})
    return path


def write_evaluation_outputs(report: EvaluationReport, out_dir: str | Path, *, caption: str = "") -> list[Path]:
    """``metrics.json``, ``anytime.csv`` (the served rule's curve) and ``figures/*.png`` + ``*.svg``
    (``exit_rules``: every rule's curve) into ``out_dir``."""
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    written = [write_json(report.metrics(), out_dir / "metrics.json")]
    if len(report.names) > 1:
        written += saved_files(
            plot_agreement(
                report.agreement, report.names[:-1], figures / "agreement.png", split=report.split, caption=caption
            )
        )
    if report.anytime is not None:
        written.append(write_anytime_csv(report.anytime, out_dir / "anytime.csv"))
        written += saved_files(
            plot_anytime(
                report.anytime,
                figures / "anytime.png",
                split=report.split,
                caption=caption,
                guaranteed=report.guaranteed,
            )
        )
        if len(report.names) > 1:
            written += saved_files(
                plot_exit_rules(report.anytime, figures / "exit_rules.png", split=report.split, caption=caption)
            )
    return written


def write_flops_outputs(profile: FlopsProfile, out_dir: str | Path, *, caption: str = "") -> list[Path]:
    """``flops.json`` (every output's cost and the per-module parts) and ``figures/flops.png`` + ``.svg``
    (in ``figures/``, as every stage keeps its figures)."""
    out_dir = Path(out_dir)
    return [
        write_json(profile.to_dict(), out_dir / "flops.json"),
        *saved_files(plot_flops(profile, out_dir / "figures" / "flops.png", caption=caption)),
    ]


def write_rdm_outputs(
    result: RdmResult,
    out_dir: str | Path,
    *,
    caption: str = "",
    class_names: Sequence[str] | None = None,
    split: str = "",
) -> list[Path]:
    """``rdm.json`` (summaries) and ``figures/rdm.png`` + ``rdm.svg`` into ``out_dir`` (the PNG last);
    ``class_names`` (indexed by label) name the class-subset ticks, ``split`` goes in the title."""
    out_dir = Path(out_dir)
    return [
        write_json(result.metrics(), out_dir / "rdm.json"),
        *saved_files(
            plot_rdms(result, out_dir / "figures" / "rdm.png", class_names=class_names, split=split, caption=caption)
        ),
    ]
