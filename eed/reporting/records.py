"""The files a training run leaves for DVC and people, written without drawing anything (the
train stage depends on this module, not on the figures): ``metrics.json`` (the final test
accuracy and the max over epochs), ``history.csv`` (every per-epoch metric) and ``accuracy.csv``
(what dvc.yaml's per-classifier plot draws); and the one-line caption of every figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from eed.config import Config
from eed.models.from_config import resolve_architecture
from eed.models.multi_exit import output_order

# The per-epoch accuracy metrics of each split in a training history.
EPOCH_ACCURACY_PREFIX = {"train": "train/acc_", "val": "val/acc_", "test": "test/epoch_acc_"}

History = dict[str, list[tuple[int, float]]]


def figure_caption(cfg: Config) -> str:
    """The one-line configuration under each figure's title, e.g.
    ``"eed · resnet18 width 16 · cifar100 · seed 0 · cpu scale"`` (a width left to the preset:
    the width the run trains at)."""
    cfg = resolve_architecture(cfg)
    network = f"{cfg.model.arch} width {cfg.model.width}"
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
    # max over epochs, as in the paper: selected on test, optimistic (eed.engine.run_record.METRIC_MEANINGS)
    max_over_epochs = {
        k.removeprefix("test/max_").replace("acc_epoch_", "epoch_"): v
        for k, v in test_metrics.items()
        if k.startswith("test/max_")
    }
    summary = {
        "test": selected,
        "test_max_over_epochs": max_over_epochs,
        "last_epoch": {k.replace("/", "_"): v for k, v in last.items()},
        "epochs": epochs,
    }
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
    """``epoch,split,classifier,top1_pct`` (top-1 in %) for every per-epoch accuracy metric."""
    rows = []
    for split, prefix in EPOCH_ACCURACY_PREFIX.items():
        for name, points in history.items():
            classifier = name[len(prefix) :] if name.startswith(prefix) else None
            if classifier is not None and output_order(classifier) is not None:
                rows += [(epoch, split, classifier, value) for epoch, value in points]
    rows.sort(key=lambda row: (row[0], list(EPOCH_ACCURACY_PREFIX).index(row[1]), output_order(row[2])))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "split", "classifier", "top1_pct"])
        writer.writerows((epoch, split, classifier, f"{100 * value:.2f}") for epoch, split, classifier, value in rows)
    return path
