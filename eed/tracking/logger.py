"""Writing runs: one :class:`MlflowLogger` per run (in the spirit of Lightning's
``MLFlowLogger``), and :class:`NullLogger`, the same interface doing nothing, for a run that
is not tracked (``tracking.enabled: false``, or a rank other than 0 under DDP): callers never
ask whether they log.

Training, evaluation and the RDMs create one each; evaluation and the RDMs nest a child run
under the training run. Everything goes through ``MlflowClient``, except ``log_model``, which
MLflow 3 offers only through its fluent API (the model becomes a LoggedModel of the run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eed.config import Config, flatten, to_yaml
from eed.errors import TrackingError
from eed.tracking.store import (
    INHERITED_TAGS,
    NOTE_TAG,
    PARAM_VALUE_LIMIT,
    PARENT_TAG,
    STAGE_TAG,
    client_for,
    ensure_experiment,
    reaching,
    run_tags,
    source_tags,
    using_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from torch import nn


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
        self.client = client_for(tracking_uri)

    def _reaching_store(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return reaching(self.tracking_uri, f"{doing} (run {self.run_id})")

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        *,
        run_name: str,
        tags: Mapping[str, str],
        start_time: float | None = None,
    ) -> MlflowLogger:
        """A new run; ``start_time`` (``time.time()`` seconds) when the work began earlier."""
        with reaching(tracking_uri, f"starting a run in experiment {experiment!r}"):
            experiment_id = ensure_experiment(experiment, tracking_uri)
            run = client_for(tracking_uri).create_run(
                experiment_id, tags=dict(tags), run_name=run_name, start_time=_millis(start_time)
            )
        return cls(tracking_uri, run.info.run_id)

    @classmethod
    def for_training(
        cls, config: Config, tracking_uri: str, run_id: str | None = None, description: str = ""
    ) -> MlflowLogger:
        """The training run of ``config``: a new one with its params, tags (MLflow's source tags
        and ``description`` among them) and config.yaml, or ``run_id`` continued (status back
        to RUNNING)."""
        if run_id is not None:
            logger = cls(tracking_uri, run_id)
            with logger._reaching_store("marking the run RUNNING again"):
                logger.client.update_run(run_id, status="RUNNING")
            return logger
        tags = {**run_tags(config), **({NOTE_TAG: description} if description else {})}
        logger = cls.start(
            tracking_uri,
            config.tracking.experiment,
            tags=tags,
            run_name=f"{config.method}-{config.model.arch}-s{config.seed}",
        )
        logger.log_params(flatten(config))
        logger.log_text(to_yaml(config), "config.yaml")
        return logger

    def child_run(
        self, name: str, stage: str, tags: Mapping[str, str] | None = None, start_time: float | None = None
    ) -> MlflowLogger:
        """A run ``name`` of ``stage`` nested under this one (same experiment, the parent's
        identifying tags and MLflow's source tags)."""
        with self._reaching_store(f"starting its child run {name!r}"):
            parent = self.client.get_run(self.run_id)
            inherited = {k: v for k, v in parent.data.tags.items() if k in INHERITED_TAGS}
            run = self.client.create_run(
                parent.info.experiment_id,
                run_name=name,
                start_time=_millis(start_time),
                tags={**source_tags(), **inherited, PARENT_TAG: self.run_id, STAGE_TAG: stage, **(tags or {})},
            )
        return MlflowLogger(self.tracking_uri, run.info.run_id)

    @classmethod
    def for_stage(
        cls,
        tracking_uri: str,
        name: str,
        *,
        stage: str,
        parent_run_id: str | None,
        experiment: str,
        tags: Mapping[str, str],
        start_time: float | None = None,
    ) -> MlflowLogger:
        """The run ``name`` of a stage (evaluate, rdm): nested under the training run that made
        its checkpoint, or stand-alone in ``experiment`` when that run is not known."""
        if parent_run_id is not None:
            return cls(tracking_uri, parent_run_id).child_run(name, stage, tags, start_time)
        return cls.start(
            tracking_uri,
            experiment,
            run_name=name,
            start_time=start_time,
            tags={**source_tags(), STAGE_TAG: stage, **tags},
        )

    def parent_metrics(self) -> dict[str, float]:
        """The latest metric values of this run's parent (none for a top-level run)."""
        with self._reaching_store("reading its parent's metrics"):
            parent_id = self.client.get_run(self.run_id).data.tags.get(PARENT_TAG)
            return dict(self.client.get_run(parent_id).data.metrics) if parent_id else {}

    def log_params(self, params: Mapping[str, object]) -> None:
        """Each value as its ``str`` (MLflow params are strings), cut to MLflow's length limit."""
        from mlflow.entities import Param

        with self._reaching_store("logging params"):
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()])

    def log_metrics(
        self,
        metrics: Mapping[str, Any],
        step: int,
        *,
        model_id: str | None = None,
        dataset: DatasetRecord | None = None,
    ) -> None:
        """Numbers at ``step``; nested dicts are flattened with ``/`` (``test/acc_main``). With
        ``model_id`` and ``dataset`` (one logged with :meth:`log_datasets`) they are also the
        logged model's metrics on that dataset: the UI's Models page shows them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        name, digest = (dataset.name, dataset.digest) if dataset is not None else (None, None)
        with self._reaching_store(f"logging metrics of step {step}"):
            self.client.log_batch(
                self.run_id,
                metrics=[
                    Metric(k, v, now, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
                    for k, v in flatten_metrics(metrics).items()
                ],
            )

    def log_datasets(self, datasets: Sequence[DatasetRecord]) -> None:
        """The run's inputs (the UI's Datasets column), each with its context (training,
        validation, test); a continued run that already has them logs none again."""
        with self._reaching_store("logging its datasets"):
            log_dataset_inputs(self.client, self.run_id, datasets)

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

    def log_figure(self, figure: Any, path: str) -> None:
        """A matplotlib figure as the artifact ``path`` (replacing the one there)."""
        with self._reaching_store(f"uploading {path}"):
            self.client.log_figure(self.run_id, figure, path)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        with self._reaching_store(f"uploading {Path(path).name}"):
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_artifacts(self, files: Sequence[str | Path], root: str | Path) -> None:
        """Each file under the artifact folder its path has relative to ``root``."""
        for path in files:
            folder = Path(path).relative_to(root).parent
            self.log_artifact(path, None if folder == Path(".") else folder.as_posix())

    def log_model(
        self, model: nn.Module, example: Any, requirements: Sequence[str], metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Log ``model`` (tensor in, tensor out) with ``mlflow.pytorch.log_model`` in the pt2
        (torch.export) format, its signature inferred from ``example``; ``metadata`` goes into
        the model's MLmodel file (e.g. which checkpoint and epoch the weights are). Returns the
        logged model's id (for :meth:`log_metrics`)."""
        import mlflow
        import mlflow.pytorch as mlflow_pytorch  # (mlflow lazily loads it: not among mlflow's exported names)
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        with (
            self._reaching_store("logging the model"),
            using_tracking_uri(self.tracking_uri),
            mlflow.start_run(run_id=self.run_id, log_system_metrics=False),
        ):
            info = mlflow_pytorch.log_model(
                model,
                name="model",
                input_example=example,
                signature=infer_signature(example, output),
                metadata=dict(metadata or {}),
                pip_requirements=[*requirements, f"mlflow=={mlflow.__version__}"],
            )
        return info.model_id

    def history(self, prefixes: Sequence[str] = ()) -> dict[str, list[tuple[int, float]]]:
        """The run's metric history ``{name: [(step, value), ...]}`` sorted by step (only names
        starting with one of ``prefixes``, when given); a step logged twice keeps its last value."""
        with self._reaching_store("reading its metric history"):
            run = self.client.get_run(self.run_id)
            history = {}
            for name in run.data.metrics:
                if not prefixes or name.startswith(tuple(prefixes)):
                    points = sorted(
                        self.client.get_metric_history(self.run_id, name), key=lambda m: (m.step, m.timestamp)
                    )
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


class NullLogger:
    """:class:`MlflowLogger`'s interface for a run that is not tracked: every write does
    nothing, the history is empty, and there is no run id."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, object]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int, **_: Any) -> None:
        pass

    def log_datasets(self, datasets: Sequence[DatasetRecord]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_text(self, text: str, path: str) -> None:
        pass

    def log_figure(self, figure: Any, path: str) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def log_artifacts(self, files: Sequence[str | Path], root: str | Path) -> None:
        pass

    def log_model(self, *_: Any, **__: Any) -> None:
        return None

    def history(self, prefixes: Sequence[str] = ()) -> dict[str, list[tuple[int, float]]]:
        return {}

    def system_metrics(self, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def finish(self, status: str = "FINISHED", end_time: float | None = None) -> None:
        pass


# What a training run logs to: a run of the store, or nothing.
Logger = MlflowLogger | NullLogger


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


def log_dataset_inputs(client: MlflowClient, run_id: str, datasets: Sequence[DatasetRecord]) -> None:
    """``datasets`` as the inputs of run ``run_id``, but those it already has."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    inputs = client.get_run(run_id).inputs  # None: a run without inputs
    logged = {(d.dataset.name, d.dataset.digest) for d in (inputs.dataset_inputs if inputs is not None else [])}
    new = {(d.name, d.digest): d for d in datasets if (d.name, d.digest) not in logged}
    inputs = [
        DatasetInput(
            Dataset(d.name, d.digest, "local", json.dumps({"uri": d.source}), profile=json.dumps(d.profile)),
            [InputTag("mlflow.data.context", d.context)],
        )
        for d in new.values()
    ]
    if not inputs:
        return
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # Runs starting at once in one experiment (a grid's cells) insert the same dataset row: the store
        # looks it up, finds none, and the later insert breaks its unique key. It is there now, and the
        # failed call was rolled back whole: logging again links it to this run.
        if "unique constraint" not in str(error).lower():
            raise
        time.sleep(0.2)
        client.log_inputs(run_id, datasets=inputs)


@contextlib.contextmanager
def logged_run(logger: MlflowLogger) -> Iterator[MlflowLogger]:
    """``logger``'s run ends FINISHED when the block completes, FAILED when it raises."""
    try:
        yield logger
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")
