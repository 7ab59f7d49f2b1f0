"""The MLflow store: where it is, one client per URI opened under a lock, reachability as one
line, experiments, and the tags every run carries.

The store defaults to MLflow's embedded kind — a sqlite database (``mlflow.db``) and an
artifact folder (``mlartifacts/``) — at the project root, as absolute paths. The project
root is ``$DVC_ROOT`` when DVC runs the stage: ``dvc exp run --queue/--temp`` executes in
a copy under ``.dvc/tmp/exps/`` but sets ``DVC_ROOT`` to the real repository, so those
runs land in the same store as workspace runs. ``$MLFLOW_TRACKING_URI`` wins over both.

Several processes may start on one store at once (a DVC queue, parallel tests): opening a
sqlite store is serialised by a lock file beside it (``mlflow.db.lock``), and an experiment
another process has just created is used, not created again. A store that stops answering
(a tracking server gone) is a :class:`TrackingError` of one line naming the URI.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eed.config import Config
from eed.errors import TrackingError
from eed.paths import project_root

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# MLflow's own tag that nests a run under its parent in the UI.
PARENT_TAG = "mlflow.parentRunId"
# The tag marking a stage's child run (evaluate, rdm): not a training run.
STAGE_TAG = "eed.stage"
# Tags a child run copies from its training run, so the same filters find both.
INHERITED_TAGS = ("method", "arch", "dataset", "scale", "seed", "dvc_exp")
# MLflow's own tags: the run's description (the UI's "Description"), where the run came from,
# and the experiment's kind, which makes MLflow 3's UI open it in its "Model training" view
# (not the GenAI one).
NOTE_TAG = "mlflow.note.content"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Markdown, which the UI renders as HTML: the run-name pattern is a code span, or "<method>" would be a tag.
EXPERIMENT_NOTE = (
    "Multi-exit CNNs trained with the objectives of Exit-Ensemble Distillation (eed). Training runs "
    "are named `<method>-<arch>-s<seed>`; their evaluate and rdm runs are nested under them."
)
RUN_ID = re.compile(r"[0-9a-f]{32}")
PARAM_VALUE_LIMIT = 6000


# --------------------------------------------------------------------------- the store


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


def _sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory sqlite)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def _store_lock(database: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>.lock``, between processes. Without a lock file we
    can create (missing or read-only folder) the block runs unlocked: MLflow then reports the
    real problem itself."""
    try:
        handle = open(f"{database}.lock", "a")  # noqa: SIM115 (held while the store is in use)
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        yield


# sqlite URIs whose store this process has already opened (MLflow caches the store per URI).
_opened_stores: set[str] = set()


def client_for(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    # A new sqlite store announces its schema creation at INFO on stderr: not the user's news.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    database = _sqlite_database(tracking_uri)
    if database is None or tracking_uri in _opened_stores:
        return MlflowClient(tracking_uri)
    # The first client of a sqlite URI in a process opens the store, and MLflow then creates
    # or migrates the tables and inserts the Default experiment when they are missing — with
    # no lock of its own. Processes opening a new store together (a DVC queue, DDP ranks,
    # parallel tests) would each run the migrations and all but one would fail ("table
    # experiments already exists", "duplicate column name: step"): one at a time instead.
    with _store_lock(database):
        client = MlflowClient(tracking_uri)
    _opened_stores.add(tracking_uri)
    return client


def unreachable_reason(error: BaseException) -> str | None:
    """Why the store could not be reached ("Connection refused", "no answer within 10 s"),
    when that is what ``error`` is; None for every other error. MLflow wraps the network
    error of a request (requests' ConnectionError/Timeout, urllib3's, the socket's) in an
    MlflowException whose message is a page of URLs and reprs; the chain keeps the cause."""
    import requests

    chain, link = [], error
    while link is not None and link not in chain and len(chain) < 20:
        chain.append(link)
        link = link.__cause__ or link.__context__
    network = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)
    if not any(isinstance(link, network) for link in chain):
        return None
    if any(isinstance(link, (requests.exceptions.Timeout, TimeoutError)) for link in chain):
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')} s"
    reasons = [link.strerror for link in chain if isinstance(link, OSError) and link.strerror]
    return reasons[-1] if reasons else type(chain[-1]).__name__


@contextlib.contextmanager
def reaching(tracking_uri: str, doing: str) -> Iterator[None]:
    """A lost connection to the store while ``doing`` becomes ONE line (a TrackingError naming
    the URI), not MLflow's chained tracebacks; any other error passes unchanged."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        reason = unreachable_reason(error)
        if reason is None:
            raise
        raise TrackingError(
            f"MLflow tracking store {tracking_uri} is not reachable ({reason}) while {doing}"
        ) from error


def check_tracking_uri(tracking_uri: str) -> None:
    """Fail fast, before any training, if the store cannot be reached or written."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.parent.is_dir():
            raise TrackingError(f"MLflow tracking URI {tracking_uri!r}: folder {database.parent} does not exist")
        _check_writable(database)
    elif parsed.scheme in ("http", "https"):
        # No long retry loop against a server that is not there.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    elif parsed.scheme not in ("file", "", "databricks", "postgresql", "mysql", "mssql"):
        raise TrackingError(f"MLflow tracking URI {tracking_uri!r}: unsupported scheme {parsed.scheme!r}")
    try:
        client_for(tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many types; all mean "unusable"
        reason = unreachable_reason(error)
        if reason is None:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise TrackingError(f"MLflow tracking store {tracking_uri!r} is not reachable: {reason}") from None


def _check_writable(database: Path) -> None:
    """A sqlite store this user cannot write (the database, the folder its journal goes in, or the
    artifact folder beside it): refused now, not as sqlite's traceback after an epoch."""
    artifacts = database.parent / DEFAULT_ARTIFACTS
    unwritable = [
        path for path in (database, database.parent, artifacts) if path.exists() and not os.access(path, os.W_OK)
    ]
    if unwritable:
        raise TrackingError(
            f"MLflow tracking store {database} is read-only for this user ({unwritable[0]} cannot "
            "be written): runs are logged into it. Use a store you can write (tracking.uri, "
            "$MLFLOW_TRACKING_URI), or tracking.enabled=false"
        )


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
        # None unsets the URI and $MLFLOW_TRACKING_URI, though mlflow annotates the argument str | Path.
        mlflow.set_tracking_uri(previous)  # pyright: ignore[reportArgumentType]
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it with an absolute artifact location if needed."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        _check_artifact_location(experiment, tracking_uri)
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before eed set it
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=default_artifact_location(tracking_uri),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: EXPERIMENT_NOTE},
        )
    except MlflowException as error:
        # Another process created it between our look-up and our create (several runs
        # starting at once): theirs is ours. Same code from a sqlite store and a server.
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise TrackingError(
                f"MLflow store {tracking_uri} says experiment {name!r} already exists but does not return it"
            ) from None
        return experiment.experiment_id


def _check_artifact_location(experiment: Any, tracking_uri: str) -> None:
    """A sqlite store's experiments keep their artifact folder as an absolute path. A store
    copied with its checkout (``cp -r``) or moved would write the new runs' artifacts into the
    original's ``mlartifacts/`` (or a folder that is gone): refuse, saying what to do."""
    expected = default_artifact_location(tracking_uri)
    database = _sqlite_database(tracking_uri)
    location = experiment.artifact_location or ""
    if (
        expected is None
        or database is None  # in-memory sqlite: no file that could have been copied or moved
        or location == expected
        or not location.rstrip("/").endswith("/" + DEFAULT_ARTIFACTS)
    ):
        return  # not a store eed laid out, or laid out here
    raise TrackingError(
        f"MLflow store {database} was made at another path: its experiment {experiment.name!r} keeps artifacts in "
        f"{location.removeprefix('file://')}, not beside it in {expected.removeprefix('file://')} (a copied or moved "
        f"checkout). Start a store of its own here (mv {database.name} {database.name}.copied; mv {DEFAULT_ARTIFACTS} "
        f"{DEFAULT_ARTIFACTS}.copied), or set tracking.uri to the original store"
    )


def git_commit(cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or project_root(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard tags of where a run comes from (``mlflow.user``, ``mlflow.source.name``,
    ``mlflow.source.type``, ``mlflow.source.git.commit``), which runs created with the client
    do not get by themselves: MLflow's own context providers, plus the project's commit."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = dict(resolve_tags())
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is not None and program.name == "eed":  # the CLI: say which command
        tags["mlflow.source.name"] = " ".join(["eed", *sys.argv[1:2]])
    elif program is not None and program.suffix == ".py":  # a DVC stage: the script, from the project
        with contextlib.suppress(ValueError):
            tags["mlflow.source.name"] = program.resolve().relative_to(project_root()).as_posix()
    commit = git_commit()
    if commit != "unknown":
        tags[GIT_COMMIT_TAG] = commit
    return tags


def run_tags(config: Config) -> dict[str, str]:
    tags = {
        **source_tags(),
        "method": config.method,
        "arch": config.model.arch,
        "dataset": config.data.dataset,
        "scale": config.scale,
        "seed": str(config.seed),
    }
    # DVC sets DVC_EXP_NAME for `dvc exp run`; the MLflow UI can then group runs by experiment.
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags
