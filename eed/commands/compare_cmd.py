"""`eed compare`: parse, call :func:`eed.compare.run_compare`, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from eed.commands.common import OverridesOption, ParamsOption, fail, load


def compare(
    experiment: Annotated[Optional[list[str]], typer.Argument(
        help="MLflow experiment name(s) to read runs from (default: tracking.experiment).")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(
        "--tag", "-t", help="Only runs with this tag, e.g. --tag arch=resnet18 --tag dataset=cifar100 "
                            "(repeatable; all must match).")] = None,
    run_id: Annotated[Optional[list[str]], typer.Option(
        "--run-id", help="Compare exactly these runs instead of searching experiments (repeatable).")] = None,
    split: Annotated[str, typer.Option(
        help="Metrics to tabulate: test (final test/acc_*) or val (last val/acc_*).")] = "test",
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder for comparison.md, comparison.csv and figures/comparison.png "
             "(default: <paths.out_dir>/compare).")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: OverridesOption = None,
) -> None:
    """Tabulate MLflow training runs in the shape of the paper's Tables I/II.

    One row per method and loss setting (output loss, alpha, beta), columns exit 1..k-1, main
    and ensemble; cells are mean ± sample std over the runs (seeds) sharing a configuration,
    n shown, best main accuracy marked. Writes comparison.md, comparison.csv and a figure.
    """
    from eed.compare import CompareError, parse_tags, run_compare
    from eed.tracking import resolve_tracking_uri

    config = load(params, set_)
    if split not in ("test", "val"):
        fail(f"--split must be test or val, got {split!r}")
    experiments = [] if run_id else (experiment or [config.tracking.experiment])
    out_dir = out or Path(config.paths.out_dir) / "compare"
    try:
        table, files = run_compare(resolve_tracking_uri(config), out_dir, experiments=experiments,
                                   tags=parse_tags(tag or []), run_ids=run_id or [], split=split)
    except CompareError as error:
        fail(str(error))
    console = Console()
    console.print(table.rich_table())
    for warning in table.warnings():
        console.print(f"[yellow]note:[/] {warning}")
    if table.skipped:
        console.print(f"[yellow]note:[/] skipped {len(table.skipped)} runs without {split}/acc_main "
                      f"(unfinished or failed)")
    console.print(f"Wrote {', '.join(str(f) for f in files)}")
