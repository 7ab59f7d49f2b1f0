"""``eed serve``: answer requests for a served early-exit model over HTTP (MLflow's scoring
protocol: POST /invocations), in this environment, refusing params the model does not take."""

from __future__ import annotations

from eed import tracking
from eed.config import Config
from eed.errors import ConfigError, Stopped
from eed.stages import stdout
from eed.tracking import server


def serve(config: Config, model: str, host: str = "127.0.0.1", port: int = 5001, compiled: bool | None = None) -> None:
    """Serve ``model`` (``models:/<id>``, ``models:/<name>@<alias>``, or an MLflow run id: its latest
    served model) from the configured tracking store until stopped; ``compiled``: its segments
    compiled at load or not (the same answers; eed.inference.compiled), None: the model's logged default."""
    if not config.tracking.enabled:
        raise ConfigError("eed serve loads the served model from MLflow, and tracking.enabled is false")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    server.check_free(host, port)
    tracking_uri = tracking.resolve_tracking_uri(config)
    tracking.check_tracking_uri(tracking_uri)
    model_uri = server.served_model_uri(tracking_uri, model)
    app = server.serving_app(tracking_uri, model_uri, None if compiled is None else {"compiled": compiled})
    stdout().print(
        f'Serving {model_uri} on http://{host}:{port}/invocations (README, "Deploy": what a request '
        "holds); Ctrl-C stops",
        highlight=False,
    )
    try:
        server.serve(app, host, port)
    except (Stopped, KeyboardInterrupt) as signal:  # how a server is meant to stop: not an error
        stdout().print(f"Stopped ({'SIGTERM' if isinstance(signal, Stopped) else 'Ctrl-C'})", highlight=False)
