"""MLflow, spoken in one package and nowhere else (a test checks that no other module imports it):

* :mod:`~eed.tracking.store`: where the store is, its client, reachability, experiments, tags;
* :mod:`~eed.tracking.logger`: :class:`MlflowLogger` writes one run, :class:`NullLogger` stands
  in for a run that is not tracked;
* :mod:`~eed.tracking.runs`: run search and checkpoint download;
* :mod:`~eed.tracking.served`: the served early-exit model as an MLflow pyfunc, and the registry;
* :mod:`~eed.tracking.tracking_server`: an ``mlflow server`` of eed's own, for a grid.

MLflow itself is imported inside the functions that use it: importing this package is cheap.
"""

from eed.tracking.logger import (
    DatasetRecord,
    Logger,
    MlflowLogger,
    NullLogger,
    flatten_metrics,
    logged_run,
)
from eed.tracking.runs import (
    RunRecord,
    downloaded_artifact,
    downloaded_checkpoint,
    find_runs,
    looks_like_run_id,
    run_exists,
    stage_runs,
)
from eed.tracking.served import (
    describe_served_model,
    log_served_model,
    register_served_model,
    served_model_of,
    served_models,
)
from eed.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    check_tracking_uri,
    ensure_experiment,
    resolve_tracking_uri,
    using_tracking_uri,
)
from eed.tracking.tracking_server import server_command, tracking_server

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "NOTE_TAG",
    "DatasetRecord",
    "Logger",
    "MlflowLogger",
    "NullLogger",
    "RunRecord",
    "check_tracking_uri",
    "describe_served_model",
    "downloaded_artifact",
    "downloaded_checkpoint",
    "ensure_experiment",
    "find_runs",
    "flatten_metrics",
    "log_served_model",
    "logged_run",
    "looks_like_run_id",
    "register_served_model",
    "resolve_tracking_uri",
    "run_exists",
    "served_model_of",
    "served_models",
    "server_command",
    "stage_runs",
    "tracking_server",
    "using_tracking_uri",
]
