"""`eed models`: parse, call :func:`eed.stages.flops.models`."""

from __future__ import annotations

from typing import Annotated

import typer

from eed.errors import guarded


@guarded
def models(
    width: Annotated[
        int | None,
        typer.Option(min=1, help="Channels of the first stage for every row (default: each architecture's own)."),
    ] = None,
) -> None:
    """List the registered backbones: family, input size, exits, parameters, main-output GFLOPs."""
    from eed.stages import flops as stage

    stage.models(width)
