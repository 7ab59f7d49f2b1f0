"""`eed paper`: parse, call :func:`eed.stages.paper.paper`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def paper(
    experiment: Annotated[
        list[str] | None,
        typer.Argument(help="MLflow experiment name(s) to read runs from (default: tracking.experiment)."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="KEY=VALUE", help="Only runs with this tag (repeatable; all must match)."),
    ] = None,
    run_id: Annotated[
        list[str] | None, typer.Option("--run-id", metavar="RUN_ID", help="Report exactly these runs (repeatable).")
    ] = None,
    against: Annotated[
        str | None,
        typer.Option(metavar="METHOD", help="The reference of the differences (default: branchynet when there)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for paper.md, paper.html and the figures (default: <paths.out_dir>/paper)."),
    ] = None,
    params: ParamsOption = None,
    set_: OverridesOption = None,
) -> None:
    """The reproduction report: every configuration of the MLflow store beside the paper's Tables
    I-IV (ours: mean ± std over seeds, the paper's number, the protocol of each), the paired
    difference from branchynet with its 95 % interval, GFLOPs per output computed beside Table III,
    and Figs. 2-5 of one run per method; as paper.md and a self-contained paper.html.
    """
    from eed.stages import paper as stage

    stage.paper(load(params, set_), experiment or [], tags=tag or [], run_ids=run_id or [], out=out, against=against)
