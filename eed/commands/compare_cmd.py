"""`eed compare`: parse, call :func:`eed.stages.compare.compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, TableSplit, load
from eed.errors import guarded


@guarded
def compare(
    experiment: Annotated[
        list[str] | None,
        typer.Argument(help="MLflow experiment name(s) to read runs from (default: tracking.experiment)."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            "-t",
            metavar="KEY=VALUE",
            help="Only runs with this tag, e.g. --tag arch=resnet18 --tag dataset=cifar100 "
            "(repeatable; all must match).",
        ),
    ] = None,
    run_id: Annotated[
        list[str] | None,
        typer.Option(
            "--run-id",
            metavar="RUN_ID",
            help="Compare exactly these runs instead of searching experiments (repeatable).",
        ),
    ] = None,
    split: Annotated[
        TableSplit,
        typer.Option(
            help="Metrics to tabulate: test (test/acc_*: best.pt, selected on validation), val (last "
            "val/acc_*) or test_max (test/max_acc_*: max over epochs, as in the paper; selected on test, "
            "optimistic)."
        ),
    ] = TableSplit.test,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder for comparison.md, comparison.csv and figures/comparison.png "
            "(default: <paths.out_dir>/compare)."
        ),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option(
            metavar="METHOD",
            help="The reference method: each row gains its difference from the row of METHOD trained "
            "under the same setup, per output, in points, with a 95 % confidence interval "
            "(default: branchynet when the table has it).",
        ),
    ] = None,
    params: ParamsOption = None,
    set_: OverridesOption = None,
) -> None:
    """Tabulate MLflow training runs in the shape of the paper's Tables I/II.

    One row per configuration: runs that differ in any training setting but the seed (scale,
    width, epochs, schedule, subset, loss settings, teacher, ...) are different rows. Settings
    that vary are columns, the shared ones are listed once above the table. Columns exit
    1..k-1, main and ensemble; cells are mean ± sample std over the runs (seeds) of a row,
    n shown, best main accuracy per setup marked. Runs that did not end FINISHED are left
    out and listed. Writes comparison.md, comparison.csv and a figure.

    Differences: each row minus its reference row (--against's method under the same setup; for
    a teacher subset, the teacher of every classifier), per output. The interval is Student's t
    on the per-seed differences over the seeds both rows share (Welch's over all their runs when
    they share fewer than two); * marks one that excludes 0, a difference the seeds do not explain.
    """
    from eed.stages import compare as stage

    stage.compare(
        load(params, set_),
        experiment or [],
        tags=tag or [],
        run_ids=run_id or [],
        split=split.value,
        out=out,
        against=against,
    )
