"""`eed evaluate`: parse, call :func:`eed.evaluation.run_evaluation`, print the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from eed.commands.common import OverridesOption, ParamsOption, fail, load

SPLITS = ("test", "val")
WHICH = ("best", "last")


def evaluate(
    source: Annotated[str, typer.Argument(
        help="What to evaluate: a checkpoint file (e.g. outputs/train/checkpoints/best.pt) or the "
             "MLflow run id of a training run (its checkpoints/ artifact is downloaded).")],
    params: ParamsOption = Path("params.yaml"),
    set_: OverridesOption = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split to report: test | val (default: eval.split). Early-exit budget thresholds "
             "are always fitted on val.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder for metrics.json, anytime.csv and figures/ "
             "(default: <paths.out_dir>/evaluate).")] = None,
    checkpoint: Annotated[str, typer.Option(
        help="With a run id: which checkpoint to download, best | last.")] = "best",
    log: Annotated[bool, typer.Option(
        "--log/--no-log",
        help="Log the results as a child run 'evaluate' of the checkpoint's MLflow run.")] = True,
) -> None:
    """Score every classifier of a trained network: accuracy, calibration, agreement, early exit.

    From one forward pass over the split: top-1/top-5 and ECE of each exit, the main output,
    the ensemble of all classifiers and the running ensembles of the first j; exit vs main
    agreement counts (paper Fig. 2); early-exit accuracy against GFLOPs per sample over a
    sweep of confidence thresholds, with thresholds fitted to eval.budgets on val. Writes
    metrics.json, anytime.csv and figures/, and logs them as a child run of the training run.
    """
    from eed.checkpoint import CheckpointError
    from eed.data.errors import DataError
    from eed.evaluation import EvaluationError, report_tables, run_evaluation
    from eed.tracking import TrackingError

    config = load(params, set_)
    if split is not None and split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if checkpoint not in WHICH:
        fail(f"--checkpoint must be one of {', '.join(WHICH)}, got {checkpoint!r}")
    out_dir = out or Path(config.paths.out_dir) / "evaluate"
    try:
        result = run_evaluation(source, config, out_dir, split=split, log=log and config.tracking.enabled,
                                which=checkpoint)
    except (CheckpointError, DataError, EvaluationError, TrackingError, FileNotFoundError) as error:
        fail(str(error))
    console = Console()
    for table in report_tables(result.report):
        console.print(table)
    for note in result.report.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"Wrote {len(result.files)} files to {out_dir}")
    if result.mlflow_run_id:
        console.print(f"MLflow run: {result.mlflow_run_id}")
