"""`eed serve`: parse, call :mod:`eed.stages.serve`."""

from __future__ import annotations

from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="models:/<id> (what eed evaluate and eed export print), models:/<name>@<alias> (eed register), "
            "or an MLflow run id: its latest served model."
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5001,
    compiled: Annotated[
        bool | None,
        typer.Option(
            "--compiled/--eager",
            help="Run the network's segments compiled with torch.compile (compiled once at start-up, the same "
            "answers; the default of models logged by eed, as it measured faster) or eagerly.",
            show_default=False,
        ),
    ] = None,
    params: ParamsOption = None,
    set_: OverridesOption = None,
) -> None:
    """Serve a served early-exit model over HTTP: POST /invocations, MLflow's scoring protocol.

    Runs MLflow's own scoring server in eed's environment (no activated venv needed) and refuses
    a request param the model does not take (MLflow's server would drop it silently). The model
    is read from the configured tracking store (tracking.uri). Ctrl-C stops.
    """
    from eed.stages import serve as stage

    stage.serve(load(params, set_), model, host, port, compiled)
