"""`eed train`: parse, call :func:`eed.train.train`, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from eed.commands.common import OverridesOption, ParamsOption, fail, load


def train(
    params: ParamsOption = Path("params.yaml"),
    set_: OverridesOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: <paths.out_dir>/train).")] = None,
    resume: Annotated[str, typer.Option(
        help="'auto': continue last.pt if it is an unfinished run of the same config; "
             "'never': start fresh; or a checkpoint path to continue.")] = "auto",
) -> None:
    """Train the configured multi-exit network with the configured method; log to MLflow."""
    import sys

    from eed.train import TrainingInterrupted, relaunch_under_torchrun, train as run_training

    config = load(params, set_)
    relaunch_under_torchrun(config.train.nproc, ["-m", "eed.cli", *sys.argv[1:]])
    out_dir = out or Path(config.paths.out_dir) / "train"
    try:
        result = run_training(config, out_dir, resume=resume)
    except TrainingInterrupted as interrupted:
        fail(str(interrupted), code=interrupted.exit_code)
    for name, value in result.test_metrics.items():
        typer.echo(f"{name}: {value:.4f}")
    if result.run_id:
        typer.echo(f"MLflow run: {result.run_id}")
