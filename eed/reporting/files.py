"""The files the stages write for DVC and people: ``metrics.json`` (DVC metrics),
``history.csv`` (every per-epoch metric), ``accuracy.csv`` and ``anytime.csv`` (what dvc.yaml's
plots draw), ``flops.json``, ``rdm.json`` and the figures beside them (PNG and SVG). Each writer
takes a result object and returns the paths it wrote; ``caption=`` (see :func:`figure_caption`)
is passed to every figure it draws."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from eed.models.multi_exit import output_order
from eed.reporting.figures import (
    EPOCH_ACCURACY_PREFIX,
    plot_agreement,
    plot_anytime,
    plot_flops,
    plot_rdms,
    saved_files,
)

if TYPE_CHECKING:
    from eed.config import Config
    from eed.metrics.anytime import AnytimeReport
    from eed.metrics.flops import FlopsProfile
    from eed.metrics.rdm import RdmResult
    from eed.metrics.summary import EvaluationReport

History = dict[str, list[tuple[int, float]]]


def figure_caption(cfg: "Config") -> str:
    """The one-line configuration under each figure's title, e.g.
    ``"eed · resnet18 width 16 · cifar100 · seed 0 · cpu scale"``."""
    width = cfg.model.width
    if width is None:  # left to the scale preset: the width the run actually trains at
        width = cfg.resolved().model.width
    network = f"{cfg.model.arch} width {width}" if width is not None else f"{cfg.model.arch} own width"
    return " · ".join([cfg.method, network, cfg.data.dataset, f"seed {cfg.seed}", f"{cfg.scale} scale"])


def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_training_summary(history: History, test_metrics: dict[str, float], epochs: int, out_dir: Path) -> list[Path]:
    """``metrics.json`` (final test accuracy of the selected weights and the max over epochs,
    last epoch's values), ``history.csv`` (one row per epoch, every metric) and ``accuracy.csv``
    (one row per epoch, split and classifier: the long form dvc.yaml's per-classifier plot
    draws, whatever the number of exits)."""
    last = {name: points[-1][1] for name, points in history.items() if points}
    selected = {k.removeprefix("test/"): v for k, v in test_metrics.items() if k.startswith("test/acc_")}
    # max over epochs, as in the paper: selected on test, optimistic (eed.engine.trainer.METRIC_MEANINGS)
    max_over_epochs = {k.removeprefix("test/max_").replace("acc_epoch_", "epoch_"): v
                       for k, v in test_metrics.items() if k.startswith("test/max_")}
    summary = {"test": selected, "test_max_over_epochs": max_over_epochs,
               "last_epoch": {k.replace("/", "_"): v for k, v in last.items()},
               "epochs": epochs}
    metrics_path = write_json(summary, out_dir / "metrics.json")
    all_epochs = sorted({step for points in history.values() for step, _ in points})
    columns = sorted(history)
    history_path = out_dir / "history.csv"
    with open(history_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *[c.replace("/", "_") for c in columns]])
        values = {c: dict(history[c]) for c in columns}
        for epoch in all_epochs:
            writer.writerow([epoch, *[values[c].get(epoch, "") for c in columns]])
    return [metrics_path, history_path, write_accuracy_csv(history, out_dir / "accuracy.csv")]


def write_accuracy_csv(history: History, path: Path) -> Path:
    """``epoch,split,classifier,accuracy`` (accuracy in %) for every per-epoch accuracy metric."""
    rows = []
    for split, prefix in EPOCH_ACCURACY_PREFIX.items():
        for name, points in history.items():
            classifier = name[len(prefix):] if name.startswith(prefix) else None
            if classifier is not None and output_order(classifier) is not None:
                rows += [(epoch, split, classifier, value) for epoch, value in points]
    rows.sort(key=lambda row: (row[0], list(EPOCH_ACCURACY_PREFIX).index(row[1]), output_order(row[2])))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "split", "classifier", "accuracy"])
        writer.writerows((epoch, split, classifier, f"{100 * value:.2f}") for epoch, split, classifier, value in rows)
    return path


def write_anytime_csv(report: "AnytimeReport", path: Path) -> Path:
    """One row per threshold: threshold, gflops, accuracy, frac_<classifier>... (for ``dvc plots``)."""
    rows = report.curve.rows()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" for key, value in row.items()})
    return path


def write_evaluation_outputs(report: "EvaluationReport", out_dir: str | Path, *, caption: str = "") -> list[Path]:
    """``metrics.json``, ``anytime.csv`` and ``figures/*.png`` + ``*.svg`` into ``out_dir``."""
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    written = [write_json(report.metrics(), out_dir / "metrics.json")]
    if len(report.names) > 1:
        written += saved_files(plot_agreement(report.agreement, report.names[:-1], figures / "agreement.png",
                                              split=report.split, caption=caption))
    if report.anytime is not None:
        written.append(write_anytime_csv(report.anytime, out_dir / "anytime.csv"))
        written += saved_files(plot_anytime(report.anytime, figures / "anytime.png", split=report.split,
                                            caption=caption))
    return written


def write_flops_outputs(profile: "FlopsProfile", out_dir: str | Path, *, caption: str = "") -> list[Path]:
    """``flops.json`` (every output's cost and the per-module parts), ``flops.png`` and ``flops.svg``."""
    out_dir = Path(out_dir)
    return [write_json(profile.to_dict(), out_dir / "flops.json"),
            *saved_files(plot_flops(profile, out_dir / "flops.png", caption=caption))]


def write_rdm_outputs(result: "RdmResult", out_dir: str | Path, *, caption: str = "",
                      class_names: Sequence[str] | None = None, split: str = "") -> list[Path]:
    """``rdm.json`` (summaries) and ``figures/rdm.png`` + ``rdm.svg`` into ``out_dir`` (the PNG last);
    ``class_names`` (indexed by label) name the class-subset ticks, ``split`` goes in the title."""
    out_dir = Path(out_dir)
    return [write_json(result.metrics(), out_dir / "rdm.json"),
            *saved_files(plot_rdms(result, out_dir / "figures" / "rdm.png", class_names=class_names, split=split,
                                   caption=caption))]
