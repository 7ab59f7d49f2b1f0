"""`eed export` and `eed register`: parse, call :mod:`eed.stages.export`."""

from __future__ import annotations

from typing import Annotated

import typer

from eed.commands.common import Checkpoint, OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def export(
    source: Annotated[
        str | None,
        typer.Argument(
            help="What to export: the MLflow run id of a training run, or a checkpoint file "
            "(default: the train stage's best.pt).",
            show_default=False,
        ),
    ] = None,
    params: ParamsOption = None,
    set_: OverridesOption = None,
    checkpoint: Annotated[
        Checkpoint, typer.Option(help="With a run id: which checkpoint to download.")
    ] = Checkpoint.best,
) -> None:
    """Log the served early-exit model of a trained network (MLflow pyfunc + torch.export programs).

    Fits the temperatures, the budget thresholds and the guaranteed threshold (eval.max_drop,
    eval.delta) on val, and logs the network with them as the 'served' model of the training
    run (of a stand-alone 'export' run for a checkpoint file of no known run). The evaluate
    stage does the same for every pipeline run. README, "Deploy": serve it, query it.
    """
    from eed.stages import export as stage

    stage.export(load(params, set_), source, which=checkpoint.value)


@guarded
def register(
    run: Annotated[str, typer.Argument(help="The MLflow run id whose served model to register.")],
    alias: Annotated[str, typer.Option(help="Alias to point at the new version, e.g. champion.")],
    name: Annotated[
        str | None, typer.Option(help="Registered model name (default: tracking.experiment).", show_default=False)
    ] = None,
    params: ParamsOption = None,
    set_: OverridesOption = None,
) -> None:
    """Put a run's served model in the MLflow model registry, under an alias.

    Registers a new version of the model and points the alias at it (aliases, not the
    deprecated stages); deploy it as models:/NAME@ALIAS.
    """
    from eed.stages import export as stage

    stage.register(load(params, set_), run, alias, name)
