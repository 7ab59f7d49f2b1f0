"""``eed train`` and the train stage."""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from eed import tracking
from eed.config import Config
from eed.engine.runtime import relaunch_under_torchrun
from eed.engine.trainer import Callback, TrainResult
from eed.engine.trainer import train as run_training
from eed.paths import in_workspace
from eed.reporting.records import History, figure_caption, write_training_summary
from eed.reporting.training_curves import build_stability
from eed.stages import stdout


class LiveStabilityFigure(Callback):
    """Fig. 5 (every classifier's accuracy per epoch in one chart per split) into the training run
    at every checkpoint, so that MLflow shows the exits side by side while training goes on: its
    own charts draw each metric apart. The report stage replaces it with the final one.

    At most once per ``min_interval_s`` (drawing and uploading take about 0.3 s: per epoch, a
    few % of a short GPU epoch; BENCHMARKS.md)."""

    def __init__(self, caption: str, min_interval_s: float = 30.0) -> None:
        self.caption, self.min_interval_s = caption, min_interval_s
        self.drawn_at: float | None = None

    def on_epoch_saved(self, epoch: int, history: History, logger: tracking.Logger) -> None:
        now = time.monotonic()
        if self.drawn_at is not None and now - self.drawn_at < self.min_interval_s:
            return
        figure = build_stability(history, caption=self.caption)
        if figure is not None:
            logger.log_figure(figure, "figures/stability.png")  # where the report stage logs it too
            self.drawn_at = now


class TrainingFiles(Callback):
    """``metrics.json``, ``history.csv`` and ``accuracy.csv`` beside ``checkpoints/`` (the figures
    are drawn from the checkpoint's history by :func:`eed.stages.report.training_figures`)."""

    def on_train_end(self, result: TrainResult) -> None:
        write_training_summary(result.history, result.test_metrics, result.epochs_completed, result.out_dir)


def test_table(test_metrics: dict[str, float]) -> Table:
    """The end of training as a person reads it: per output, top-1 on test in % with ``best.pt`` and,
    where measured, the best over the epochs with its epoch (MLflow and metrics.json keep fractions)."""
    names = [key.removeprefix("test/acc_") for key in test_metrics if key.startswith("test/acc_")]
    table = Table(title="Test top-1 % (best.pt: the epoch chosen on val; the last without val)", title_justify="left")
    table.add_column("output")
    table.add_column("best.pt", justify="right")
    has_max = any(f"test/max_acc_{name}" in test_metrics for name in names)
    if has_max:
        table.add_column("max over epochs (epoch)", justify="right")
    for name in names:
        row = [name, f"{100 * test_metrics[f'test/acc_{name}']:.2f}"]
        if has_max:
            best, epoch = test_metrics.get(f"test/max_acc_{name}"), test_metrics.get(f"test/max_acc_epoch_{name}")
            row.append(
                "—"
                if best is None
                else f"{100 * best:.2f} ({int(epoch)})"
                if epoch is not None
                else f"{100 * best:.2f}"
            )
        table.add_row(*row)
    return table


def train(
    config: Config, *, out: Path | None = None, resume: str = "auto", argv: list[str] | None = None
) -> TrainResult:
    """``eed train`` and the train stage. With ``train.nproc > 1`` or ``train.nnodes > 1``
    outside torchrun, this process is replaced by torchrun running the same command (``argv``,
    default sys.argv); with ``nnodes > 1`` each machine runs it with its own ``train.node_rank``."""
    relaunch_under_torchrun(config.train, argv)
    result = run_training(
        config,
        out or in_workspace(config.paths.out_dir) / "train",
        resume=resume,
        callbacks=[LiveStabilityFigure(figure_caption(config)), TrainingFiles()],
    )
    if result.test_metrics:  # only the main process reports
        console = stdout()
        console.print(test_table(result.test_metrics))
        if result.run_id:
            console.print(f"MLflow run: {result.run_id}", highlight=False)
    return result
