"""MLflow, spoken in one place: where the store is, one logger object for writing runs, and
the few reads the project needs (metric history, checkpoint download, run search).

No other module imports MLflow. Writes go through :class:`MlflowLogger` (in the spirit of
Lightning's ``MLFlowLogger``): training, evaluation and the RDMs create one each, and
evaluation and the RDMs nest a child run under the training run. Everything goes through
``MlflowClient``, except ``log_model``, which MLflow 3 offers only through its fluent API
(the model becomes a LoggedModel of the run).

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
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from eed.config import Config, flatten, to_yaml
from eed.errors import ConfigError, SourceError, TrackingError
from eed.paths import project_root

if TYPE_CHECKING:
    from torch import nn

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
EXPERIMENT_NOTE = ("Multi-exit CNNs trained with the objectives of Exit-Ensemble Distillation (eed). Training runs "
                   "are named <method>-<arch>-s<seed>; their evaluate and rdm runs are nested under them.")
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
        handle = open(f"{database}.lock", "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        yield


# sqlite URIs whose store this process has already opened (MLflow caches the store per URI).
_opened_stores: set[str] = set()


def _client(tracking_uri: str):
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


def _unreachable(error: BaseException) -> str | None:
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
def _reaching(tracking_uri: str, doing: str) -> Iterator[None]:
    """A lost connection to the store while ``doing`` becomes ONE line (a TrackingError naming
    the URI), not MLflow's chained tracebacks; any other error passes unchanged."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        reason = _unreachable(error)
        if reason is None:
            raise
        raise TrackingError(f"MLflow tracking store {tracking_uri} is not reachable ({reason}) "
                            f"while {doing}") from error


def check_tracking_uri(tracking_uri: str) -> None:
    """Fail fast, before any training, if the store cannot be reached or written."""
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
        _client(tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many types; all mean "unusable"
        reason = _unreachable(error)
        if reason is None:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise TrackingError(f"MLflow tracking store {tracking_uri!r} is not reachable: {reason}") from None


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
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        _check_artifact_location(experiment, tracking_uri)
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before eed set it
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: EXPERIMENT_NOTE})
    except MlflowException as error:
        # Another process created it between our look-up and our create (several runs
        # starting at once): theirs is ours. Same code from a sqlite store and a server.
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise TrackingError(f"MLflow store {tracking_uri} says experiment {name!r} already exists "
                                f"but does not return it") from None
        return experiment.experiment_id


def _check_artifact_location(experiment: Any, tracking_uri: str) -> None:
    """A sqlite store's experiments keep their artifact folder as an absolute path. A store
    copied with its checkout (``cp -r``) or moved would write the new runs' artifacts into the
    original's ``mlartifacts/`` (or a folder that is gone): refuse, saying what to do."""
    expected = default_artifact_location(tracking_uri)
    location = experiment.artifact_location or ""
    if expected is None or location == expected or not location.rstrip("/").endswith("/" + DEFAULT_ARTIFACTS):
        return  # not a store eed laid out, or laid out here
    database = _sqlite_database(tracking_uri)
    raise TrackingError(
        f"MLflow store {database} was made at another path: its experiment {experiment.name!r} keeps artifacts in "
        f"{location.removeprefix('file://')}, not beside it in {expected.removeprefix('file://')} (a copied or moved "
        f"checkout). Start a store of its own here (mv {database.name} {database.name}.copied; mv {DEFAULT_ARTIFACTS} "
        f"{DEFAULT_ARTIFACTS}.copied), or set tracking.uri to the original store")


def git_commit(cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or project_root(),
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard tags of where a run comes from (``mlflow.user``, ``mlflow.source.name``,
    ``mlflow.source.type``, ``mlflow.source.git.commit``), which runs created with the client
    do not get by themselves: MLflow's own context providers, plus the project's commit."""
    import sys

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


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"acc_main": 0.7}}`` -> ``{"test/acc_main": 0.7}``; None values dropped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


# --------------------------------------------------------------------------- the logger


class MlflowLogger:
    """One MLflow run: params, per-step metrics, artifacts, the model, child runs, the end.

    Make one with :meth:`start` (a new run), :meth:`resume` (continue a run, e.g. a resumed
    training) or :meth:`child_run` (a stage's run nested under this one).
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = _client(tracking_uri)

    def _reaching_store(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return _reaching(self.tracking_uri, f"{doing} (run {self.run_id})")

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, *, run_name: str, tags: Mapping[str, str],
              start_time: float | None = None) -> "MlflowLogger":
        """A new run; ``start_time`` (``time.time()`` seconds) when the work began earlier."""
        with _reaching(tracking_uri, f"starting a run in experiment {experiment!r}"):
            experiment_id = ensure_experiment(experiment, tracking_uri)
            run = _client(tracking_uri).create_run(experiment_id, tags=dict(tags), run_name=run_name,
                                                   start_time=_millis(start_time))
        return cls(tracking_uri, run.info.run_id)

    @classmethod
    def for_training(cls, config: Config, tracking_uri: str, run_id: str | None = None,
                     description: str = "") -> "MlflowLogger":
        """The training run of ``config``: a new one with its params, tags (MLflow's source tags
        and ``description`` among them) and config.yaml, or ``run_id`` continued (status back
        to RUNNING)."""
        if run_id is not None:
            logger = cls(tracking_uri, run_id)
            with logger._reaching_store("marking the run RUNNING again"):
                logger.client.update_run(run_id, status="RUNNING")
            return logger
        tags = {**run_tags(config), **({NOTE_TAG: description} if description else {})}
        logger = cls.start(tracking_uri, config.tracking.experiment, tags=tags,
                           run_name=f"{config.method}-{config.model.arch}-s{config.seed}")
        logger.log_params(flatten(config))
        logger.log_text(to_yaml(config), "config.yaml")
        return logger

    def child_run(self, name: str, stage: str, tags: Mapping[str, str] | None = None,
                  start_time: float | None = None) -> "MlflowLogger":
        """A run ``name`` of ``stage`` nested under this one (same experiment, the parent's
        identifying tags and MLflow's source tags)."""
        with self._reaching_store(f"starting its child run {name!r}"):
            parent = self.client.get_run(self.run_id)
            inherited = {k: v for k, v in parent.data.tags.items() if k in INHERITED_TAGS}
            run = self.client.create_run(parent.info.experiment_id, run_name=name, start_time=_millis(start_time),
                                         tags={**source_tags(), **inherited, PARENT_TAG: self.run_id,
                                               STAGE_TAG: stage, **(tags or {})})
        return MlflowLogger(self.tracking_uri, run.info.run_id)

    @classmethod
    def for_stage(cls, tracking_uri: str, name: str, *, stage: str, parent_run_id: str | None, experiment: str,
                  tags: Mapping[str, str], start_time: float | None = None) -> "MlflowLogger":
        """The run ``name`` of a stage (evaluate, rdm): nested under the training run that made
        its checkpoint, or stand-alone in ``experiment`` when that run is not known."""
        if parent_run_id is not None:
            return cls(tracking_uri, parent_run_id).child_run(name, stage, tags, start_time)
        return cls.start(tracking_uri, experiment, run_name=name, start_time=start_time,
                         tags={**source_tags(), STAGE_TAG: stage, **tags})

    def parent_metrics(self) -> dict[str, float]:
        """The latest metric values of this run's parent (none for a top-level run)."""
        with self._reaching_store("reading its parent's metrics"):
            parent_id = self.client.get_run(self.run_id).data.tags.get(PARENT_TAG)
            return dict(self.client.get_run(parent_id).data.metrics) if parent_id else {}

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        with self._reaching_store("logging params"):
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int, *, model_id: str | None = None,
                    dataset: "DatasetRecord | None" = None) -> None:
        """Numbers at ``step``; nested dicts are flattened with ``/`` (``test/acc_main``). With
        ``model_id`` and ``dataset`` (one logged with :meth:`log_datasets`) they are also the
        logged model's metrics on that dataset: the UI's Models page shows them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        name, digest = (dataset.name, dataset.digest) if dataset is not None else (None, None)
        with self._reaching_store(f"logging metrics of step {step}"):
            self.client.log_batch(self.run_id, metrics=[
                Metric(k, v, now, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
                for k, v in flatten_metrics(metrics).items()])

    def log_datasets(self, datasets: Sequence["DatasetRecord"]) -> None:
        """The run's inputs (the UI's Datasets column), each with its context (training,
        validation, test); a continued run that already has them logs none again."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        with self._reaching_store("logging its datasets"):
            logged = {(d.dataset.name, d.dataset.digest) for d in self.client.get_run(self.run_id).inputs.dataset_inputs}
            inputs = [DatasetInput(Dataset(d.name, d.digest, "local", json.dumps({"uri": d.source}),
                                           profile=json.dumps(d.profile)),
                                   [InputTag("mlflow.data.context", d.context)])
                      for d in datasets if (d.name, d.digest) not in logged]
            if inputs:
                self.client.log_inputs(self.run_id, datasets=inputs)

    @contextlib.contextmanager
    def system_metrics(self, enabled: bool = True) -> Iterator[None]:
        """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk,
        network; GPU ones where ``pynvml`` is installed) sampled every 10 s during the block
        ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it), continuing their steps in a
        resumed run."""
        if not enabled:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop INFO lines
        with self._reaching_store("starting its system metrics"):
            monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with self._reaching_store("setting tags"):
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, path: str) -> None:
        with self._reaching_store(f"uploading {path}"):
            self.client.log_text(self.run_id, text, path)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        with self._reaching_store(f"uploading {Path(path).name}"):
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_artifacts(self, files: Sequence[str | Path], root: str | Path) -> None:
        """Each file under the artifact folder its path has relative to ``root``."""
        for path in files:
            folder = Path(path).relative_to(root).parent
            self.log_artifact(path, None if folder == Path(".") else folder.as_posix())

    def log_model(self, model: "nn.Module", example: Any, requirements: Sequence[str],
                  metadata: Mapping[str, Any] | None = None) -> str:
        """Log ``model`` (tensor in, tensor out) with ``mlflow.pytorch.log_model`` in the pt2
        (torch.export) format, its signature inferred from ``example``; ``metadata`` goes into
        the model's MLmodel file (e.g. which checkpoint and epoch the weights are). Returns the
        logged model's id (for :meth:`log_metrics`)."""
        import mlflow
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        with self._reaching_store("logging the model"), using_tracking_uri(self.tracking_uri), \
                mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
            info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                            signature=infer_signature(example, output), metadata=dict(metadata or {}),
                                            pip_requirements=[*requirements, f"mlflow=={mlflow.__version__}"])
        return info.model_id

    def history(self, prefixes: Sequence[str] = ()) -> dict[str, list[tuple[int, float]]]:
        """The run's metric history ``{name: [(step, value), ...]}`` sorted by step (only names
        starting with one of ``prefixes``, when given); a step logged twice keeps its last value."""
        with self._reaching_store("reading its metric history"):
            run = self.client.get_run(self.run_id)
            history = {}
            for name in run.data.metrics:
                if not prefixes or name.startswith(tuple(prefixes)):
                    points = sorted(self.client.get_metric_history(self.run_id, name),
                                    key=lambda m: (m.step, m.timestamp))
                    history[name] = sorted({m.step: m.value for m in points}.items())
        return history

    def finish(self, status: str = "FINISHED", end_time: float | None = None) -> None:
        """End the run: FINISHED, FAILED or KILLED. FAILED and KILLED are said on the way out of
        an error or a signal, which is what the user must see: when the store cannot be reached
        then, the run stays RUNNING there (a re-run continues it) and nothing is raised here."""
        try:
            with self._reaching_store(f"ending the run {status}"):
                self.client.set_terminated(self.run_id, status=status, end_time=_millis(end_time))
        except TrackingError:
            if status == "FINISHED":
                raise


def _millis(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset a run reads, as MLflow records it: ``digest`` at most 36 characters (MLflow's
    limit), ``source`` a URI, ``profile`` its sizes, ``context`` training/validation/test."""

    name: str
    digest: str
    source: str
    context: str
    profile: dict[str, Any]


@contextlib.contextmanager
def logged_run(logger: MlflowLogger) -> Iterator[MlflowLogger]:
    """``logger``'s run ends FINISHED when the block completes, FAILED when it raises."""
    try:
        yield logger
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")


# --------------------------------------------------------------------------- reading runs


def looks_like_run_id(text: str) -> bool:
    return RUN_ID.fullmatch(text) is not None


@contextlib.contextmanager
def downloaded_checkpoint(tracking_uri: str, run_id: str, which: str = "best") -> Iterator[tuple[Path, str]]:
    """The run's ``checkpoints/{which}.pt`` (else the other of best/last) in a temporary
    folder, for the block: ``(local path, artifact name)``. :class:`SourceError` when the run
    or its checkpoints are missing."""
    from mlflow.exceptions import MlflowException

    with _reaching(tracking_uri, f"reading run {run_id}"):
        client = _client(tracking_uri)
        try:
            client.get_run(run_id)
        except MlflowException as error:
            if _unreachable(error):
                raise  # a store that is down, not a run that is missing
            raise SourceError(f"{run_id!r} is neither a checkpoint file nor a run in the MLflow store "
                              f"{client.tracking_uri}") from None
        available = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")}
    preferred = [f"{which}.pt"] + [name for name in ("best.pt", "last.pt") if name != f"{which}.pt"]
    names = [name for name in preferred if name in available]
    if not names:
        raise SourceError(f"MLflow run {run_id} has no checkpoints/best.pt or checkpoints/last.pt artifact "
                          f"(did its training finish?)")
    # A progress bar for one local file is noise on the console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="eed-checkpoint-") as tmp:
        with _reaching(tracking_uri, f"downloading checkpoints/{names[0]} of run {run_id}"):
            path = Path(client.download_artifacts(run_id, f"checkpoints/{names[0]}", tmp))
        yield path, names[0]


@dataclass
class RunRecord:
    """A logged run as the comparison tables read it."""

    run_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # last logged value of each metric
    status: str = "FINISHED"  # MLflow's RUNNING, SCHEDULED, FINISHED, FAILED or KILLED


def _filter_string(tags: Mapping[str, str]) -> str:
    clauses = []
    for key, value in tags.items():
        escaped = str(value).replace("'", "\\'")
        clauses.append(f"tags.`{key}` = '{escaped}'")
    return " and ".join(clauses)


def find_runs(tracking_uri: str, *, experiments: Sequence[str] = (), tags: Mapping[str, str] | None = None,
              run_ids: Sequence[str] = ()) -> list[RunRecord]:
    """Runs given by id, else every run of ``experiments`` (all experiments when none are
    named) that carries all of ``tags``. Nested stage runs (``evaluate``, ``rdm``) are left
    out unless asked for by id: they are not training runs."""
    with _reaching(tracking_uri, "searching its runs"):
        return _find_runs(tracking_uri, experiments, dict(tags or {}), run_ids)


def _find_runs(tracking_uri: str, experiments: Sequence[str], tags: dict[str, str],
               run_ids: Sequence[str]) -> list[RunRecord]:
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)

    def record(run: Any) -> RunRecord:
        return RunRecord(run.info.run_id, dict(run.data.params), dict(run.data.tags), dict(run.data.metrics),
                         run.info.status)

    if run_ids:
        records = []
        for run_id in run_ids:
            try:
                records.append(record(client.get_run(run_id)))
            except MlflowException as error:
                if _unreachable(error):
                    raise  # a store that is down, not a run that is missing
                raise TrackingError(f"no MLflow run {run_id!r} in {client.tracking_uri}") from None
        return [r for r in records if all(r.tags.get(k) == v for k, v in tags.items())]

    if experiments:
        experiment_ids = []
        for name in experiments:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                known = ", ".join(e.name for e in client.search_experiments()) or "none"
                raise TrackingError(f"no MLflow experiment {name!r} in {client.tracking_uri} (known: {known})")
            experiment_ids.append(experiment.experiment_id)
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]

    records, page_token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=_filter_string(tags), max_results=1000,
                                  page_token=page_token)
        records.extend(record(run) for run in page)
        page_token = page.token
        if not page_token:
            break
    return [r for r in records if STAGE_TAG not in r.tags and PARENT_TAG not in r.tags]


# --------------------------------------------------------------------------- the served early-exit model

from collections.abc import Callable  # this section's own import (the imports above are unchanged)

# The served model's name in its run, and its artifacts: the checkpoint, the serving settings (JSON),
# the exported programs.
SERVED_NAME = "served"
SERVED_CHECKPOINT = "checkpoint"
SERVED_SETTINGS = "settings"
SERVED_PROGRAMS = "programs"
_served_class: type | None = None


def _early_exit_pyfunc() -> type:
    """The ``mlflow.pyfunc.PythonModel`` subclass, built on first use so that importing this
    module does not import MLflow. Reached as ``eed.tracking.EarlyExitPyfunc`` (module
    ``__getattr__``), which is also how a pickled instance finds its class again.

    It knows nothing of networks: ``loader(checkpoint_path, settings)`` (a module-level
    function, pickled by reference, e.g. :func:`eed.serving.load_served`) builds the object
    whose ``answer(images, threshold=, budget=, use_max_drop=, calibrated=, return_logits=)``
    returns the columns; this module depends on no model code."""
    global _served_class
    if _served_class is not None:
        return _served_class
    import mlflow.pyfunc

    class EarlyExitPyfunc(mlflow.pyfunc.PythonModel):
        """Early exit served: uint8 images (N, H, W, 3) in, one row per image out. Params:
        threshold, budget (a named threshold), max_drop, calibrated, return_logits."""

        def __init__(self, loader: Callable[[Path, dict[str, Any]], Any]):
            self.loader = loader

        def load_context(self, context):
            settings = json.loads(Path(context.artifacts[SERVED_SETTINGS]).read_text())
            self.served = self.loader(Path(context.artifacts[SERVED_CHECKPOINT]), settings)

        def predict(self, context, model_input, params=None):
            import numpy as np
            import pandas as pd

            params = params or {}
            answer = self.served.answer(np.asarray(model_input), threshold=params.get("threshold"),
                                        budget=params.get("budget"), use_max_drop=bool(params.get("max_drop")),
                                        calibrated=params.get("calibrated"),  # None: as fitted
                                        return_logits=bool(params.get("return_logits")))
            return pd.DataFrame(answer)

    EarlyExitPyfunc.__module__ = __name__
    EarlyExitPyfunc.__qualname__ = "EarlyExitPyfunc"
    _served_class = EarlyExitPyfunc
    return EarlyExitPyfunc


def __getattr__(name: str) -> Any:
    if name == "EarlyExitPyfunc":
        return _early_exit_pyfunc()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def log_served_model(tracking_uri: str, run_id: str, checkpoint_path: str | Path, settings: Mapping[str, Any],
                     example_images: Any, *, loader: Callable[[Path, dict[str, Any]], Any],
                     programs: str | Path | None = None) -> str:
    """Log the checkpoint at ``checkpoint_path`` as a servable early-exit model (``served``) of
    run ``run_id``, with ``settings`` (JSON-able) beside it; ``loader(checkpoint_path,
    settings)`` builds the answering object where the model is loaded (and once here, to
    refuse bad settings before anything is logged). ``example_images``: a few uint8
    (N, H, W, 3) images, the input example. The ``eed`` package travels with the model
    (``code_paths``), so a server needs torch, numpy and pandas but not this project.
    ``programs``: a folder logged with the model as its ``programs`` artifact (the exported
    programs of :mod:`eed.engine.programs`). Returns the logged model's id (load it as ``models:/<id>``)."""
    import mlflow
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    example_images = np.asarray(example_images)
    if example_images.dtype != np.uint8 or example_images.ndim != 4 or example_images.shape[-1] != 3:
        raise ValueError(f"example images must be uint8 (N, H, W, 3), got {example_images.dtype} "
                         f"{tuple(example_images.shape)}")
    settings = json.loads(json.dumps(dict(settings)))  # JSON-able, and what load_context will see
    loader(Path(checkpoint_path), settings).answer(example_images)  # bad settings or images fail here
    _, height, width, _ = example_images.shape
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width, 3))]),
        outputs=Schema([ColSpec("long", "class"), ColSpec("string", "class_name"), ColSpec("double", "confidence"),
                        ColSpec("string", "exit"), ColSpec("long", "exit_index"), ColSpec("double", "gflops"),
                        ColSpec(Array(Array("double")), "logits", required=False)]),
        params=ParamSchema([ParamSpec("threshold", "double", None), ParamSpec("budget", "string", None),
                            ParamSpec("max_drop", "boolean", False), ParamSpec("calibrated", "boolean", None),
                            ParamSpec("return_logits", "boolean", False)]))
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                    f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}"]
    client = _client(tracking_uri)  # opens a new sqlite store under the lock (see _client)
    with _reaching(tracking_uri, f"reading run {run_id}"):
        before = client.get_run(run_id).info
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # MLflow's advice on type hints and on models as code does not apply to a wrapped network.
        warnings.filterwarnings("ignore", message=".*type hints.*")
        warnings.filterwarnings("ignore", message=".*python_model.*")
        settings_path = Path(folder) / "settings.json"
        settings_path.write_text(json.dumps(settings, indent=2))
        with _reaching(tracking_uri, "logging the served model"), using_tracking_uri(tracking_uri), \
                mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pyfunc.log_model(
                name=SERVED_NAME, python_model=_early_exit_pyfunc()(loader),
                artifacts={SERVED_CHECKPOINT: str(checkpoint_path), SERVED_SETTINGS: str(settings_path),
                           **({SERVED_PROGRAMS: str(programs)} if programs is not None else {})},
                code_paths=[str(Path(__file__).parent)],  # the eed package: the loader's code
                signature=signature, input_example=example_images, pip_requirements=requirements)
    if before.status != "RUNNING":  # start_run re-opened a finished run: give it back its end and status
        with _reaching(tracking_uri, f"restoring the end of run {run_id}"):
            client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info.model_id


def served_model_of(tracking_uri: str, run_id: str) -> str:
    """The id of run ``run_id``'s latest served model; a TrackingError when it has none."""
    client = _client(tracking_uri)
    with _reaching(tracking_uri, f"searching the models of run {run_id}"):
        try:
            experiment_id = client.get_run(run_id).info.experiment_id
        except Exception as error:
            if _unreachable(error):
                raise
            raise TrackingError(f"no MLflow run {run_id!r} in {tracking_uri}") from None
        found = client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{SERVED_NAME}'",
            order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1)
    if not found:
        raise TrackingError(f"run {run_id} has no served model: `eed export {run_id}` logs one "
                            f"(the evaluate stage does too)")
    return found[0].model_id


def register_served_model(tracking_uri: str, run_id: str, name: str, alias: str) -> tuple[str, str]:
    """Register run ``run_id``'s latest served model as a new version of the registered model
    ``name`` and point ``alias`` at it (MLflow's aliases, not its deprecated stages). Returns
    (the model id, the version). A name or alias MLflow refuses is a ConfigError naming it,
    and leaves the registry as it was."""
    from mlflow.exceptions import MlflowException

    model_id = served_model_of(tracking_uri, run_id)
    client = _client(tracking_uri)

    def refused(error: MlflowException, option: str, value: str) -> ConfigError:
        if _unreachable(error) or error.error_code != "INVALID_PARAMETER_VALUE":
            raise error
        return ConfigError(f"{option} {value!r}: {str(error).splitlines()[0]}")

    with _reaching(tracking_uri, f"registering model {name!r}"):
        created = False
        try:
            client.create_registered_model(name)
            created = True
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise refused(error, "--name", name) from None
        version = str(client.create_model_version(name, f"models:/{model_id}", run_id=run_id,
                                                  model_id=model_id).version)
        try:
            client.set_registered_model_alias(name, alias, version)
        except MlflowException as error:
            problem = refused(error, "--alias", alias)
            client.delete_model_version(name, version)
            if created:
                client.delete_registered_model(name)
            raise problem from None
    return model_id, version
