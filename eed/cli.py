"""The ``eed`` command line: each command (``eed/commands/``) parses its options and calls its
entry function in :mod:`eed.stages`, inside the one error boundary (:func:`eed.errors.guarded`)."""

from __future__ import annotations

import typer

from eed.commands.compare_cmd import compare
from eed.commands.evaluate_cmd import evaluate
from eed.commands.flops_cmd import flops
from eed.commands.models_cmd import models
from eed.commands.prepare_cmd import prepare
from eed.commands.rdm_cmd import rdm
from eed.commands.train_cmd import train

app = typer.Typer(
    help="Exit-Ensemble Distillation: multi-exit CNNs, five training objectives, FFCV data, MLflow tracking.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for command in (models, flops, prepare, train, evaluate, rdm, compare):
    app.command()(command)

if __name__ == "__main__":
    app()
