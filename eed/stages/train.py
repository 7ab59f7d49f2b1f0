"""``eed train`` and the train stage."""

from __future__ import annotations

from pathlib import Path

from eed.config import Config
from eed.engine.runtime import relaunch_under_torchrun
from eed.engine.trainer import Callback, TrainResult
from eed.engine.trainer import train as run_training
from eed.paths import in_workspace
from eed.reporting.records import write_training_summary
from eed.stages import stdout


class TrainingFiles(Callback):
    """``metrics.json``, ``history.csv`` and ``accuracy.csv`` beside ``checkpoints/`` (the figures
    are drawn from the checkpoint's history by :func:`eed.stages.report.training_figures`)."""

    def on_train_end(self, result: TrainResult) -> None:
        write_training_summary(result.history, result.test_metrics, result.epochs_completed, result.out_dir)


def train(config: Config, *, out: Path | None = None, resume: str = "auto",
          argv: list[str] | None = None) -> TrainResult:
    """``eed train`` and the train stage. With ``train.nproc > 1`` or ``train.nnodes > 1``
    outside torchrun, this process is replaced by torchrun running the same command (``argv``,
    default sys.argv); with ``nnodes > 1`` each machine runs it with its own ``train.node_rank``."""
    relaunch_under_torchrun(config.train, argv)
    result = run_training(config, out or in_workspace(config.paths.out_dir) / "train", resume=resume,
                          callbacks=[TrainingFiles()])
    if result.test_metrics:  # only the main process reports
        console = stdout()
        for name, value in result.test_metrics.items():
            console.print(f"{name}: {value:.4f}", highlight=False)
        if result.run_id:
            console.print(f"MLflow run: {result.run_id}", highlight=False)
    return result
