"""One entry function per command and DVC stage, one module each: ``eed <command>``
(``eed/commands/``) and ``pipeline/<stage>.py`` both call these, so a stage cannot drift
from its command.

Each function does the command's work from a validated config and prints its outcome on the
console; the modules it orchestrates do the rest (``engine`` trains and runs passes over
data, ``metrics`` computes, ``reporting`` writes and draws, ``tracking`` logs). Run them
inside :func:`eed.errors.error_boundary`: the CLI does (``eed.errors.guarded``), and so does
:func:`run_stage` for the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from eed.config import Config, load_config
from eed.errors import error_boundary

PARAMS_FILE = "params.yaml"


# soft_wrap: a message holding a path is never broken across lines (tables still fit the width).
def stdout() -> Console:
    return Console(soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def run_stage(stage: Callable[[Config], object], params: str = PARAMS_FILE) -> None:
    """A DVC stage: ``stage(config of params.yaml)`` inside the error boundary."""
    with error_boundary():
        stage(load_config(params))
