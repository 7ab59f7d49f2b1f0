"""`eed train`: parse, call :func:`eed.stages.train.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def train(
    params: ParamsOption = None,
    set_: OverridesOption = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <paths.out_dir>/train).")] = None,
    resume: Annotated[
        str,
        typer.Option(
            metavar="auto|never|PATH",
            help="'auto': continue last.pt if it is an unfinished run of the same config; "
            "'never': start fresh; or a checkpoint path to continue.",
        ),
    ] = "auto",
) -> None:
    """Train the configured multi-exit network with the configured method; log to MLflow. Then draw
    the training curves (as the pipeline's report stage does)."""
    from eed.stages import report
    from eed.stages import train as stage

    config = load(params, set_)
    result = stage.train(config, out=out, resume=resume)
    if result.test_metrics:  # the main process (rank 0 under torchrun)
        report.training_figures(config, result.out_dir)
