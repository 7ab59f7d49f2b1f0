"""Reading runs: search by experiment and tags (training runs only), and a run's checkpoint."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eed.errors import SourceError, TrackingError
from eed.tracking.store import PARENT_TAG, RUN_ID, STAGE_TAG, client_for, reaching, unreachable_reason


def looks_like_run_id(text: str) -> bool:
    return RUN_ID.fullmatch(text) is not None


@contextlib.contextmanager
def downloaded_checkpoint(tracking_uri: str, run_id: str, which: str = "best") -> Iterator[tuple[Path, str]]:
    """The run's ``checkpoints/{which}.pt`` (else the other of best/last) in a temporary
    folder, for the block: ``(local path, artifact name)``. :class:`SourceError` when the run
    or its checkpoints are missing."""
    from mlflow.exceptions import MlflowException

    with reaching(tracking_uri, f"reading run {run_id}"):
        client = client_for(tracking_uri)
        try:
            client.get_run(run_id)
        except MlflowException as error:
            if unreachable_reason(error):
                raise  # a store that is down, not a run that is missing
            raise SourceError(
                f"{run_id!r} is neither a checkpoint file nor a run in the MLflow store {client.tracking_uri}"
            ) from None
        available = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")}
    preferred = [f"{which}.pt"] + [name for name in ("best.pt", "last.pt") if name != f"{which}.pt"]
    names = [name for name in preferred if name in available]
    if not names:
        raise SourceError(
            f"MLflow run {run_id} has no checkpoints/best.pt or checkpoints/last.pt artifact (did its training finish?)"
        )
    # A progress bar for one local file is noise on the console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="eed-checkpoint-") as tmp:
        with reaching(tracking_uri, f"downloading checkpoints/{names[0]} of run {run_id}"):
            path = Path(client.download_artifacts(run_id, f"checkpoints/{names[0]}", tmp))
        yield path, names[0]


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether ``run_id`` is an active run of the store (False: deleted, or never in this store,
    e.g. a checkpoint's run after ``tracking.uri`` changed). A store that is down is a TrackingError."""
    from mlflow.exceptions import MlflowException

    with reaching(tracking_uri, f"looking up run {run_id}"):
        try:
            run = client_for(tracking_uri).get_run(run_id)
        except MlflowException as error:
            if unreachable_reason(error):
                raise
            return False
    return run.info.lifecycle_stage == "active"


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


def find_runs(
    tracking_uri: str,
    *,
    experiments: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
    run_ids: Sequence[str] = (),
) -> list[RunRecord]:
    """Runs given by id, else every run of ``experiments`` (all experiments when none are
    named) that carries all of ``tags``. Nested stage runs (``evaluate``, ``rdm``) are left
    out unless asked for by id: they are not training runs."""
    with reaching(tracking_uri, "searching its runs"):
        return _find_runs(tracking_uri, experiments, dict(tags or {}), run_ids)


def _find_runs(
    tracking_uri: str, experiments: Sequence[str], tags: dict[str, str], run_ids: Sequence[str]
) -> list[RunRecord]:
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)

    def record(run: Any) -> RunRecord:
        return RunRecord(
            run.info.run_id, dict(run.data.params), dict(run.data.tags), dict(run.data.metrics), run.info.status
        )

    if run_ids:
        records = []
        for run_id in run_ids:
            try:
                records.append(record(client.get_run(run_id)))
            except MlflowException as error:
                if unreachable_reason(error):
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
        page = client.search_runs(
            experiment_ids, filter_string=_filter_string(tags), max_results=1000, page_token=page_token
        )
        records.extend(record(run) for run in page)
        page_token = page.token
        if not page_token:
            break
    return [r for r in records if STAGE_TAG not in r.tags and PARENT_TAG not in r.tags]


def stage_runs(tracking_uri: str, run_id: str) -> dict[str, str]:
    """``{stage: run id}`` of the stage runs (``evaluate``, ``rdm``) nested under the training run
    ``run_id``: the latest FINISHED one of each stage."""
    with reaching(tracking_uri, f"searching the stage runs of {run_id}"):
        client = client_for(tracking_uri)
        experiment_id = client.get_run(run_id).info.experiment_id
        children = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
    found: dict[str, str] = {}
    for child in children:
        found.setdefault(child.data.tags.get(STAGE_TAG, ""), child.info.run_id)
    found.pop("", None)
    return found


def downloaded_artifact(tracking_uri: str, run_id: str, path: str, folder: Path) -> Path | None:
    """The run's artifact ``path`` copied into ``folder``; None when the run has no such artifact."""
    parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
    with reaching(tracking_uri, f"downloading {path} of run {run_id}"):
        client = client_for(tracking_uri)
        if path not in {artifact.path for artifact in client.list_artifacts(run_id, parent)}:
            return None
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        folder.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, path, str(folder)))
