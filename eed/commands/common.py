"""Options every command shares: the params file and ``--set key=value`` overrides; the fixed choices
of ``--split`` and ``--checkpoint``, as Enums so that help lists them."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from eed.config import Config, load_config
from eed.errors import ConfigError
from eed.paths import PARAMS_FILE, find_workspace

ParamsOption = Annotated[
    Path | None,
    typer.Option(
        "--params",
        "-p",
        show_default=False,
        help="params.yaml to read (validated). Default: the project's, found from the current folder upward "
        "(the first folder holding params.yaml or .dvc/).",
    ),
]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a key, e.g. --set train.lr=0.05 --set method=branchynet (repeatable).",
    ),
]


# The stages' own lists (eed.stages.common.SPLITS and CHECKPOINTS, eed.reporting.comparison.TABLE_SPLITS),
# repeated here so that `eed --help` need not import torch; tests/test_cli.py checks they agree.
class Split(str, Enum):
    test = "test"
    val = "val"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"


class TableSplit(str, Enum):
    test = "test"
    val = "val"
    test_max = "test_max"


def params_file(params: Path | None) -> Path | None:
    """The params file a command reads: ``--params`` when given (it must exist), else the
    project's ``params.yaml`` (None: a project with ``.dvc/`` but no params.yaml runs on the
    built-in defaults). Outside any project without ``--params``: a ConfigError, so that no
    command runs on defaults, or creates a tracking store, in an unrelated folder."""
    if params is not None:
        return params
    root = find_workspace()
    if root is None:
        raise ConfigError(
            f"{Path.cwd().resolve()} is not inside an eed project (no {PARAMS_FILE} or .dvc/ in it "
            f"or any folder above); run eed inside the project, or pass --params FILE"
        )
    path = root / PARAMS_FILE
    return path if path.is_file() else None


def load(params: Path | None, overrides: list[str] | None) -> Config:
    """The validated config; a bad key or value raises a ConfigError naming it."""
    return load_config(params_file(params), overrides or [])
