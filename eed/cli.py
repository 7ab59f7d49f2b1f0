"""The ``eed`` command line: each command (``eed/commands/``) parses its options and calls its
entry function in :mod:`eed.stages`, inside the one error boundary (:func:`eed.errors.guarded`)."""

from __future__ import annotations

import inspect
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer._click import exceptions as click_errors  # Typer vendors Click (typer._click) since 0.2x
from typer.core import TyperArgument, TyperCommand, TyperGroup

from eed.commands.compare_cmd import compare
from eed.commands.evaluate_cmd import evaluate
from eed.commands.export_cmd import export, register
from eed.commands.flops_cmd import flops
from eed.commands.grid_cmd import grid
from eed.commands.models_cmd import models
from eed.commands.paper_cmd import paper
from eed.commands.prepare_cmd import prepare
from eed.commands.rdm_cmd import rdm
from eed.commands.report_cmd import report
from eed.commands.resolve_cmd import resolve
from eed.commands.serve_cmd import serve
from eed.commands.train_cmd import train
from eed.errors import ConfigError, error_boundary

if TYPE_CHECKING:
    # What _Help is mixed into (TyperCommand, TyperGroup): lets the checker see super()'s methods.
    from typer._click.core import Command as _HelpBase
else:
    _HelpBase = object


def reflow(text: str | None) -> str | None:
    """Each paragraph on one line: Typer's Rich help keeps a docstring's line breaks and then
    wraps again at the terminal width, which leaves fragments like 'missing.' on a line."""
    if not text:
        return text
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(text).split("\n\n"))


class _Help(_HelpBase):
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
    def collect_usage_pieces(self, ctx):
        # `eed evaluate [OPTIONS] SOURCE`, as click and man pages write it (Typer writes `{source}`).
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def parse_args(self, ctx, args):
        # A bad choice is bad configuration: one line and exit 2 from the error boundary, in the words
        # the stages use for the same value read from params.yaml, not Typer's usage panel.
        with error_boundary():
            try:
                return super().parse_args(ctx, args)
            except typer.BadParameter as error:
                choices = _choices(error.param)
                if choices is None or error.param is None:  # no param: no choices either
                    raise
                option = error.param.opts[0] if error.param.opts else error.param.name
                errors = getattr(error.__cause__, "errors", None)  # Typer's pydantic ValidationError
                problems: Any = errors() if callable(errors) else None  # list[ErrorDetails]
                value = problems[0].get("input") if problems else None
                got = "" if value is None else f", got {value!r}"
                raise ConfigError(f"{option} must be one of {', '.join(choices)}{got}") from None


class Group(_Help, TyperGroup):
    def main(
        self, args=None, prog_name=None, complete_var=None, standalone_mode=True, windows_expand_args=True, **extra
    ):
        """A usage error (unknown command or option, missing argument) is one line, ``error: …`` with
        click's spelling suggestion and where to find help, exit 2, like every other error of eed's;
        not Typer's boxed panel under a usage block."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except click_errors.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "eed"
            message = " ".join(error.format_message().split())
            print(f"error: {where}: {message} (see `{where} --help`)", file=sys.stderr)
            sys.exit(error.exit_code)
        except click_errors.ClickException as error:
            print(f"error: {' '.join(error.format_message().split())}", file=sys.stderr)
            sys.exit(error.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=Group,
    help="Exit-Ensemble Distillation: multi-exit CNNs, five training objectives, FFCV data, MLflow tracking.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        print(f"eed {version('eed')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print eed's version and exit."),
    ] = None,
) -> None:
    pass


for command in (
    models,
    flops,
    resolve,
    prepare,
    train,
    evaluate,
    export,
    register,
    serve,
    rdm,
    report,
    compare,
    paper,
    grid,
):
    app.command(cls=Command)(command)

if __name__ == "__main__":
    app()
