"""`eed serve`: MLflow's own scoring server for a served model (the FastAPI app that `mlflow models
serve` runs under uvicorn), run in this process and so in this environment, with one addition:
a request param the model does not take is refused (MLflow's server drops it with a warning in its
log, so a misspelled ``"treshold"`` would silently answer with the default threshold)."""

from __future__ import annotations

import logging
from typing import Any

from eed.errors import ConfigError, TrackingError
from eed.tracking.served import refusal_class, served_model_of
from eed.tracking.store import reaching, using_tracking_uri


class OnlyDeclaredParams:
    """A loaded pyfunc model that refuses a param its signature does not declare, then predicts as
    MLflow would. The scoring server reads ``metadata`` and calls ``predict(data, params=)``."""

    def __init__(self, model: Any):
        self._model = model
        self.metadata = model.metadata
        schema = model.metadata.get_params_schema()
        self.param_names = [param.name for param in schema.params] if schema is not None else []

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        unknown = sorted(set(params or {}) - set(self.param_names)) if isinstance(params, dict) else []
        if unknown:
            takes = ", ".join(self.param_names) or "none"
            raise refusal_class()(f"unknown param {unknown[0]!r}: this model takes {takes}")
        return self._model.predict(data, params=params)


def served_model_uri(tracking_uri: str, reference: str) -> str:
    """``models:/…`` (a logged model's id or a registered name with ``@alias`` or version) as given;
    an MLflow run id: its latest served model that finished logging."""
    if reference.startswith("models:/"):
        return reference
    return f"models:/{served_model_of(tracking_uri, reference)}"


def serving_app(tracking_uri: str, model_uri: str, model_config: dict[str, Any] | None = None) -> Any:
    """The scoring server's app for ``model_uri``, loaded from ``tracking_uri``'s store with
    ``model_config`` (load-time options, e.g. ``{"compiled": True}``)."""
    import mlflow.models
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    with reaching(tracking_uri, f"loading {model_uri}"), using_tracking_uri(tracking_uri):
        try:
            if model_config:  # options the model was not logged to take: MLflow ignores them, with a warning
                from mlflow.models.model import MODEL_CONFIG  # the flavor's key: "config"

                flavor = mlflow.models.get_model_info(model_uri).flavors.get("python_function", {})
                if set(model_config) - set(flavor.get(MODEL_CONFIG) or {}):
                    raise ConfigError(
                        f"{model_uri} was logged before it took load-time options "
                        f"({', '.join(sorted(model_config))}): re-log it with eed export, or serve "
                        "it with neither --compiled nor --eager (it loads eager)"
                    )
            model = mlflow.pyfunc.load_model(model_uri, model_config=model_config)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise
            raise TrackingError(f"no model {model_uri} in {tracking_uri}: {str(error).splitlines()[0]}") from None
    return scoring_server.init(OnlyDeclaredParams(model))


def check_free(host: str, port: int) -> None:
    """A ConfigError naming ``--port`` when nothing can listen on ``host:port`` (another server holds it,
    or the address is not this machine's): uvicorn would log it and exit 3, which eed's exit codes call
    a data error."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as error:
        raise ConfigError(
            f"--port {port}: cannot listen on {host}:{port} ({error.strerror or error}); "
            "pick another --port (or --host)"
        ) from None


def serve(app: Any, host: str, port: int) -> None:
    """Answer on ``host:port`` until stopped (Ctrl-C or SIGTERM)."""
    import uvicorn

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uvicorn.run(app, host=host, port=port, log_level="warning")
