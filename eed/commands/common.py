"""Options every command shares: the params file and ``--set key=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from eed.config import Config, load_config

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (validated).")]
OverridesOption = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a key, e.g. --set train.lr=0.05 --set method=branchynet (repeatable).")]


def load(params: Path | None, overrides: list[str] | None) -> Config:
    """The validated config; a bad key or value raises a ConfigError naming it."""
    # A missing default params.yaml means "built-in defaults"; a missing named file is an error.
    path = None if params == Path("params.yaml") and not params.exists() else params
    return load_config(path, overrides or [])
