"""`eed report`: parse, call :func:`eed.stages.report.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def report(
    params: ParamsOption = None,
    set_: OverridesOption = None,
    out: Annotated[Path | None, typer.Option(help="File to write (default: <paths.out_dir>/results.json).")] = None,
) -> None:
    """Show the run's results (every classifier's top-1/top-5 and GFLOPs, the early-exit budgets) and write results.json."""
    from eed.stages import report as stage

    stage.report(load(params, set_), out=out)
