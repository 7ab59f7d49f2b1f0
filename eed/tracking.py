"""MLflow tracking: where the store is, checking it is usable, and the run's tags.

The store defaults to MLflow's embedded kind — a sqlite database (``mlflow.db``) and an
artifact folder (``mlartifacts/``) — at the project root, as absolute paths. The project
root is ``$DVC_ROOT`` when DVC runs the stage: ``dvc exp run --queue/--temp`` executes in
a copy under ``.dvc/tmp/exps/`` but sets ``DVC_ROOT`` to the real repository, so those
runs land in the same store as workspace runs. ``$MLFLOW_TRACKING_URI`` wins over both.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from eed.config import Config
from eed.paths import project_root

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def resolve_tracking_uri(config: Config) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if config.tracking.uri:
        return config.tracking.uri
    return f"sqlite:///{project_root() / DEFAULT_DB}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store go next to the database, wherever the run executes."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        return (database.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None


def check_tracking_uri(tracking_uri: str) -> None:
    """Fail fast, before any training, if the store cannot be reached or written."""
    from mlflow.tracking import MlflowClient

    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.parent.is_dir():
            raise TrackingError(f"MLflow tracking URI {tracking_uri!r}: folder {database.parent} does not exist")
    elif parsed.scheme in ("http", "https"):
        # No long retry loop against a server that is not there.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    elif parsed.scheme not in ("file", "", "databricks", "postgresql", "mysql", "mssql"):
        raise TrackingError(f"MLflow tracking URI {tracking_uri!r}: unsupported scheme {parsed.scheme!r}")
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many types; all mean "unusable"
        raise TrackingError(f"MLflow tracking store {tracking_uri!r} is not reachable: "
                            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``tracking_uri`` for a block. ``mlflow.set_tracking_uri``
    also exports $MLFLOW_TRACKING_URI, which would then override every later run's config in
    this process; the previous value is put back."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it with an absolute artifact location if needed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))


def git_commit(cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or project_root(),
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def run_tags(config: Config) -> dict[str, str]:
    tags = {
        "method": config.method,
        "arch": config.model.arch,
        "dataset": config.data.dataset,
        "scale": config.scale,
        "seed": str(config.seed),
        "git_commit": git_commit(),
    }
    # DVC sets DVC_EXP_NAME for `dvc exp run`; the MLflow UI can then group runs by experiment.
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags


def log_model(run_id: str, model, config: Config, tracking_uri: str, input_size: int | None = None) -> None:
    """Log the network with ``mlflow.pytorch.log_model`` (pt2 / torch.export format): it takes
    normalized images ``(B, 3, H, W)`` and returns every classifier's logits ``(B, k, classes)``."""
    import copy

    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from eed.models.export import AllClassifierLogits
    from eed.models.registry import get_spec

    size = input_size or get_spec(config.model.arch).input_size
    wrapper = AllClassifierLogits(copy.deepcopy(model).cpu().float().eval())
    example = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        output = wrapper(torch.from_numpy(example)).numpy()
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]
    with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        mlflow.pytorch.log_model(wrapper, name="model", input_example=example,
                                 signature=infer_signature(example, output), pip_requirements=requirements)
