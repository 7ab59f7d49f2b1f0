"""Options every command shares: the params file and ``--set key=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

from eed.config import Config, ConfigError, load_config

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (validated).")]
OverridesOption = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a key, e.g. --set train.lr=0.05 --set method=branchynet (repeatable).")]

err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def load(params: Path | None, overrides: list[str] | None) -> Config:
    """The validated config; a bad key or value exits with a message naming it."""
    # A missing default params.yaml means "built-in defaults"; a missing named file is an error.
    path = None if params == Path("params.yaml") and not params.exists() else params
    try:
        return load_config(path, overrides or [])
    except ConfigError as error:
        fail(str(error))
