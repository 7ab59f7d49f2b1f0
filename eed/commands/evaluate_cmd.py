"""`eed evaluate`: parse, call :func:`eed.stages.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import Checkpoint, OverridesOption, ParamsOption, Split, load
from eed.errors import guarded


@guarded
def evaluate(
    source: Annotated[
        str,
        typer.Argument(
            help="What to evaluate: a checkpoint file (e.g. outputs/train/checkpoints/best.pt) or the "
            "MLflow run id of a training run (its checkpoints/ artifact is downloaded)."
        ),
    ],
    params: ParamsOption = None,
    set_: OverridesOption = None,
    split: Annotated[
        Split | None,
        typer.Option(
            help="Split to report (default: eval.split). Early-exit budget thresholds are always fitted on val."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder for metrics.json, anytime.csv and figures/ (default: <paths.out_dir>/evaluate)."
        ),
    ] = None,
    checkpoint: Annotated[
        Checkpoint, typer.Option(help="With a run id: which checkpoint to download.")
    ] = Checkpoint.best,
    log: Annotated[
        bool,
        typer.Option(
            "--log/--no-log",
            help="Log the results as a child run 'evaluate <split> <checkpoint>' (e.g. 'evaluate test best.pt') of "
            "the checkpoint's MLflow run, and the served early-exit model (models:/<id>) into that run.",
        ),
    ] = True,
) -> None:
    """Score every classifier of a trained network: accuracy, calibration, agreement, early exit.

    From one forward pass over the split: top-1/top-5 and ECE of each exit, the main output,
    the ensemble of all classifiers and the running ensembles of the first j; exit vs main
    agreement counts (paper Fig. 2); early-exit accuracy against GFLOPs per sample over a
    sweep of thresholds on the eval.exit_rule score (confidence, entropy, margin or patience),
    with thresholds fitted to eval.budgets on val, and every rule's curve and budgets beside it
    (figures/exit_rules.png). Writes metrics.json, anytime.csv and figures/, and logs them as a
    child run of the training run, with the network and its val-fitted thresholds as the served
    early-exit model (README, "Deploy"; eed serve answers requests with it).
    """
    from eed.stages import evaluate as stage

    stage.evaluate(
        load(params, set_), source, split=split.value if split else None, out=out, which=checkpoint.value, log=log
    )
