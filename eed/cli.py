"""The ``eed`` command line: each command (``eed/commands/``) parses its options and calls its
entry function in :mod:`eed.stages`, inside the one error boundary (:func:`eed.errors.guarded`)."""

from __future__ import annotations

import inspect
from enum import Enum

import typer
from typer.core import TyperCommand, TyperGroup

from eed.commands.compare_cmd import compare
from eed.commands.evaluate_cmd import evaluate
from eed.commands.export_cmd import export, register
from eed.commands.flops_cmd import flops
from eed.commands.models_cmd import models
from eed.commands.prepare_cmd import prepare
from eed.commands.rdm_cmd import rdm
from eed.commands.report_cmd import report
from eed.commands.resolve_cmd import resolve
from eed.commands.serve_cmd import serve
from eed.commands.train_cmd import train
from eed.errors import ConfigError, error_boundary


def reflow(text: str | None) -> str | None:
    """Each paragraph on one line: Typer's Rich help keeps a docstring's line breaks and then
    wraps again at the terminal width, which leaves fragments like 'missing.' on a line."""
    if not text:
        return text
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(text).split("\n\n"))


class _Help:
    """Help that reads well at 80 columns: re-flowed paragraphs, and no ``<bool>`` after a flag
    (it takes no value)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = reflow(self.help)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


def _choices(param) -> list[str] | None:
    """The allowed values of a fixed-choice parameter (an Enum option), else None."""
    descriptor = getattr(param, "type_descriptor", None)  # Typer >= 0.25
    choices = getattr(descriptor, "choices", None) or getattr(getattr(param, "type", None), "choices", None)
    return None if not choices else [c.value if isinstance(c, Enum) else str(c) for c in choices]


class Command(_Help, TyperCommand):
    def parse_args(self, ctx, args):
        # A bad choice is bad configuration: one line and exit 2 from the error boundary, in the words
        # the stages use for the same value read from params.yaml, not Typer's usage panel.
        with error_boundary():
            try:
                return super().parse_args(ctx, args)
            except typer.BadParameter as error:
                choices = _choices(error.param)
                if choices is None:
                    raise
                option = error.param.opts[0] if error.param.opts else error.param.name
                errors = getattr(error.__cause__, "errors", None)  # Typer's pydantic ValidationError
                value = errors()[0].get("input") if callable(errors) and errors() else None
                got = "" if value is None else f", got {value!r}"
                raise ConfigError(f"{option} must be one of {', '.join(choices)}{got}") from None


class Group(_Help, TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
    help="Exit-Ensemble Distillation: multi-exit CNNs, five training objectives, FFCV data, MLflow tracking.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for command in (models, flops, resolve, prepare, train, evaluate, export, register, serve, rdm, report, compare):
    app.command(cls=Command)(command)

if __name__ == "__main__":
    app()
