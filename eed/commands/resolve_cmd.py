"""`eed resolve`: parse, call :func:`eed.stages.resolve.resolve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def resolve(
    params: ParamsOption = None,
    set_: OverridesOption = None,
    out: Annotated[Path | None, typer.Option(help="File to write (default: <paths.out_dir>/resolved.yaml).")] = None,
) -> None:
    """Show and write what the keys params.yaml leaves null resolve to under the scale preset and the reference."""
    from eed.stages import resolve as stage

    stage.resolve(load(params, set_), out=out)
