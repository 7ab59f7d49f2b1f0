"""The served early-exit model on the MLflow side: a pyfunc model wrapping whatever answering
object a loader builds (:mod:`eed.inference` provides both), logged into a run with its
checkpoint, settings and exported programs, found again, and registered under an alias.

It knows nothing of networks, so the tracking package imports no model code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from eed.errors import ConfigError, TrackingError
from eed.tracking.logger import DatasetRecord, log_dataset_inputs
from eed.tracking.store import (
    client_for,
    reaching,
    unreachable_reason,
    using_tracking_uri,
)

SERVED_NAME = "served"
SERVED_CHECKPOINT = "checkpoint"
SERVED_SETTINGS = "settings"
SERVED_PROGRAMS = "programs"
_served_class: type | None = None
_refusal_class: type | None = None


def refusal_class() -> type:
    """``Refusal(reason)``: the MlflowException of a request eed refuses (HTTP 400), built on first use
    (importing this module does not import MLflow)."""
    global _refusal_class
    if _refusal_class is not None:
        return _refusal_class
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class Refusal(MlflowException):
        """A request eed refuses (HTTP 400), its message eed's own one line: MLflow's scoring server
        rewrites an MlflowException's message to echo the whole input before it, and turns any other
        error into a generic one with a stack trace that shows the server's paths."""

        def __init__(self, reason: str):
            self.reason = reason
            super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

        @property
        def message(self) -> str:
            return self.reason

        @message.setter
        def message(self, value: str) -> None:  # the server's rewrite: kept out
            pass

    Refusal.__module__ = __name__
    _refusal_class = Refusal
    return Refusal


def _early_exit_pyfunc() -> type:
    """The ``mlflow.pyfunc.PythonModel`` subclass, built on first use so that importing this
    module does not import MLflow. Reached as ``eed.tracking.served.EarlyExitPyfunc`` (module
    ``__getattr__``), which is also how a pickled instance finds its class again.

    It knows nothing of networks: ``loader(checkpoint_path, settings, options)`` (a module-level
    function, pickled by reference, e.g. :func:`eed.inference.served.load_served`) builds the object
    whose ``answer(images, threshold=, budget=, use_max_drop=, calibrated=, return_logits=, exit_rule=)``
    returns the columns; this module depends on no model code."""
    global _served_class
    if _served_class is not None:
        return _served_class
    from mlflow.pyfunc.model import PythonModel  # (mlflow.pyfunc re-exports it without listing it)

    Refusal = refusal_class()

    class EarlyExitPyfunc(PythonModel):
        """Early exit served: raw pixels (N, H, W, 3), integers 0..255, in; one row per image out. Params:
        threshold, budget (a named threshold), max_drop, calibrated, return_logits, exit_rule."""

        # MLflow's type-hint validation (and its warning when there are none) is for models that take
        # tables; this one takes pixels and checks them itself.
        _skip_type_hint_validation = True

        def __init__(self, loader: Callable[[Path, dict[str, Any], dict[str, Any]], Any]):
            self.loader = loader

        def load_context(self, context):
            settings = json.loads(Path(context.artifacts[SERVED_SETTINGS]).read_text())
            # load_model(model_config=...): load-time options such as {"compiled": true}
            self.served = self.loader(
                Path(context.artifacts[SERVED_CHECKPOINT]), settings, dict(context.model_config or {})
            )

        # mlflow leaves the base predict unannotated with an empty body, so pyright infers it returns None.
        def predict(self, context, model_input, params=None):  # pyright: ignore[reportIncompatibleMethodOverride]
            import numpy as np
            import pandas as pd

            params = params or {}
            try:
                answer = self.served.answer(
                    np.asarray(model_input),
                    threshold=params.get("threshold"),
                    budget=params.get("budget"),
                    use_max_drop=bool(params.get("max_drop")),
                    calibrated=params.get("calibrated"),  # None: as fitted
                    return_logits=bool(params.get("return_logits")),
                    exit_rule=params.get("exit_rule"),
                )  # None: the model's own
            except ValueError as error:  # the answering object's one-line reason for a bad request
                raise Refusal(str(error).splitlines()[0]) from None
            return pd.DataFrame(answer)

    EarlyExitPyfunc.__module__ = __name__
    EarlyExitPyfunc.__qualname__ = "EarlyExitPyfunc"
    _served_class = EarlyExitPyfunc
    return EarlyExitPyfunc


def __getattr__(name: str) -> Any:
    if name == "EarlyExitPyfunc":
        return _early_exit_pyfunc()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def _quietly() -> Any:
    """MLflow's notes while a model is logged are not the user's news: its warning that a Python object is
    pickled (eed's own class, by design), "Validating input example…", and a download bar per artifact."""
    logger = logging.getLogger("mlflow.pyfunc")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def log_served_model(
    tracking_uri: str,
    run_id: str,
    checkpoint_path: str | Path,
    settings: Mapping[str, Any],
    example_images: Any,
    *,
    loader: Callable[[Path, dict[str, Any], dict[str, Any]], Any],
    load_defaults: Mapping[str, Any],
    check_options: Mapping[str, Any] | None = None,
    programs: str | Path | None = None,
) -> str:
    """Log the checkpoint at ``checkpoint_path`` as a servable early-exit model (``served``) of
    run ``run_id``, with ``settings`` (JSON-able) beside it; ``loader(checkpoint_path,
    settings, options)`` builds the answering object where the model is loaded (``options``: the
    ``model_config`` it is loaded with, ``load_defaults`` where unset: every load-time option the loader
    takes, with its default), and once here, with ``check_options``, to refuse bad settings before
    anything is logged. ``example_images``: a few uint8
    (N, H, W, 3) images, the input example. The ``eed`` package travels with the model
    (``code_paths``), so a server needs torch, numpy and pandas but not this project.
    ``programs``: a folder logged with the model as its ``programs`` artifact (the exported
    programs of :mod:`eed.inference.programs`). Returns the logged model's id (load it as ``models:/<id>``)."""
    import mlflow
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    example_images = np.asarray(example_images)
    if example_images.dtype != np.uint8 or example_images.ndim != 4 or example_images.shape[-1] != 3:
        raise ValueError(
            f"example images must be uint8 (N, H, W, 3), got {example_images.dtype} {tuple(example_images.shape)}"
        )
    plain_settings: dict[str, Any] = json.loads(json.dumps(dict(settings)))  # JSON-able, as load_context sees it
    # Bad settings or images fail here.
    loader(Path(checkpoint_path), plain_settings, dict(check_options or {})).answer(example_images)
    _, height, width, _ = example_images.shape
    # No input schema: MLflow's server would cast JSON pixels to its dtype silently (0.5 -> 0); the answering
    # object takes raw pixels as any integers 0..255 and refuses the rest (described in the model's metadata).
    signature = ModelSignature(
        inputs=None,
        outputs=Schema(
            [
                ColSpec("long", "class"),
                ColSpec("string", "class_name"),
                ColSpec("double", "confidence"),
                ColSpec("string", "exit"),
                ColSpec("long", "exit_index"),
                ColSpec("double", "gflops"),
                ColSpec(Array(Array("double")), "logits", required=False),
            ]
        ),
        params=ParamSchema(
            [
                ParamSpec("threshold", "double", None),
                ParamSpec("budget", "string", None),
                ParamSpec("max_drop", "boolean", False),
                ParamSpec("calibrated", "boolean", None),
                ParamSpec("return_logits", "boolean", False),
                ParamSpec("exit_rule", "string", None),
            ]
        ),
    )
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]
    from mlflow.entities import LoggedModelOutput

    client = client_for(tracking_uri)  # opens a new sqlite store under the lock (see client_for)
    with reaching(tracking_uri, f"reading run {run_id}"):
        experiment_id = client.get_run(run_id).info.experiment_id
        # The model is made for the run, not inside it: the run is never re-opened, so a process killed
        # while logging leaves a finished run as it was, and a model PENDING that served_model_of skips.
        model = client.create_logged_model(experiment_id, name=SERVED_NAME, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            # MLflow's advice on models as code does not apply to a wrapped network.
            warnings.filterwarnings("ignore", message=".*python_model.*")
            settings_path = Path(folder) / "settings.json"
            settings_path.write_text(json.dumps(plain_settings, indent=2))
            with reaching(tracking_uri, "logging the served model"), using_tracking_uri(tracking_uri), _quietly():
                mlflow.pyfunc.log_model(
                    name=SERVED_NAME,
                    model_id=model.model_id,
                    python_model=_early_exit_pyfunc()(loader),
                    artifacts={
                        SERVED_CHECKPOINT: str(checkpoint_path),
                        SERVED_SETTINGS: str(settings_path),
                        **({SERVED_PROGRAMS: str(programs)} if programs is not None else {}),
                    },
                    code_paths=[str(Path(__file__).parents[1])],  # the eed package: the loader's code
                    signature=signature,
                    input_example=example_images,
                    pip_requirements=requirements,
                    model_config=dict(load_defaults),  # declared here, or MLflow ignores a load-time model_config
                    metadata={
                        "input": f"raw RGB pixels, N x {height} x {width} x 3, integers 0..255 (uint8, or "
                        "JSON numbers; anything else is refused, never cast)"
                    },
                )
                client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])  # the run's page lists it
    except BaseException:
        with contextlib.suppress(Exception):  # (a store gone down leaves it PENDING: skipped all the same)
            client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return model.model_id


CURRENT_TAG = "eed.current"  # "true" on the served model of a run that eed register and eed serve pick


def describe_served_model(
    tracking_uri: str,
    model_id: str,
    description: str,
    metrics: Mapping[str, float],
    results_run_id: str,
    datasets: Mapping[str, DatasetRecord] | None = None,
) -> None:
    """Give a logged served model its description (Markdown: the UI's description), link ``metrics``
    (what was measured of it, at step 0) to it as logged in run ``results_run_id`` (whose page then
    lists the model among its outputs; ``datasets``: the dataset each metric was measured on, by key,
    also logged as the run's inputs), and mark it its run's current served model (``eed.current``:
    true on it, false on the older ones)."""
    import time

    from mlflow.entities import LoggedModelOutput, Metric

    client = client_for(tracking_uri)
    with reaching(tracking_uri, f"describing the served model {model_id}"):
        model = client.get_logged_model(model_id)
        client.set_logged_model_tags(model_id, {"mlflow.note.content": description})
        now = int(time.time() * 1000)
        datasets = datasets or {}
        log_dataset_inputs(client, results_run_id, list(datasets.values()))
        client.log_batch(
            results_run_id,
            metrics=[
                Metric(
                    key,
                    float(value),
                    now,
                    0,
                    model_id=model_id,
                    dataset_name=datasets[key].name if key in datasets else None,
                    dataset_digest=datasets[key].digest if key in datasets else None,
                )
                for key, value in metrics.items()
            ],
        )
        if results_run_id != model.source_run_id:
            client.log_outputs(results_run_id, [LoggedModelOutput(model_id, step=0)])
        older = client.search_logged_models(
            [model.experiment_id], filter_string=f"source_run_id = '{model.source_run_id}' AND name = '{SERVED_NAME}'"
        )
        for other in older:
            if other.model_id != model_id and other.tags.get(CURRENT_TAG) != "false":
                client.set_logged_model_tags(other.model_id, {CURRENT_TAG: "false"})
        client.set_logged_model_tags(model_id, {CURRENT_TAG: "true"})


def served_model_of(tracking_uri: str, run_id: str) -> str:
    """The id of run ``run_id``'s latest served model that finished logging; a TrackingError when
    it has none."""
    return served_models(tracking_uri, run_id)[0]


def served_models(tracking_uri: str, run_id: str) -> tuple[str, int]:
    """(the id of run ``run_id``'s latest served model that finished logging (READY), how many newer
    ones never did: PENDING, their process killed while logging, or FAILED). A TrackingError when
    none finished."""
    client = client_for(tracking_uri)
    with reaching(tracking_uri, f"searching the models of run {run_id}"):
        try:
            experiment_id = client.get_run(run_id).info.experiment_id
        except Exception as error:
            if unreachable_reason(error):
                raise
            raise TrackingError(f"no MLflow run {run_id!r} in {tracking_uri}") from None
        found = client.search_logged_models(
            [experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{SERVED_NAME}'",
            order_by=[{"field_name": "creation_time", "ascending": False}],
        )
    statuses = [str(model.status) for model in found]
    if "READY" not in statuses:
        unfinished = f" ({len(found)} never finished logging)" if found else ""
        raise TrackingError(
            f"run {run_id} has no served model{unfinished}: `eed export {run_id}` logs one "
            f"(the evaluate stage does too)"
        )
    newest = statuses.index("READY")
    return found[newest].model_id, newest


def register_served_model(tracking_uri: str, run_id: str, name: str, alias: str) -> tuple[str, str, int]:
    """Register run ``run_id``'s latest served model that finished logging as a new version of the
    registered model ``name`` and point ``alias`` at it (MLflow's aliases, not its deprecated
    stages). Returns (the model id, the version, how many newer served models were skipped as
    unfinished). A name or alias MLflow refuses is a ConfigError naming it; any failure leaves the
    registry as it was."""
    from mlflow.exceptions import MlflowException

    model_id, unfinished = served_models(tracking_uri, run_id)
    client = client_for(tracking_uri)

    def refused(error: MlflowException, option: str, value: str) -> ConfigError:
        if unreachable_reason(error) or error.error_code != "INVALID_PARAMETER_VALUE":
            raise error
        return ConfigError(f"{option} {value!r}: {str(error).splitlines()[0]}")

    with reaching(tracking_uri, f"registering model {name!r}"):
        created = False
        try:
            client.create_registered_model(name)
            created = True
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise refused(error, "--name", name) from None
        version = None
        try:
            version = str(
                client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id).version
            )
            client.set_registered_model_alias(name, alias, version)
        except BaseException as error:  # nothing left half-registered
            with contextlib.suppress(Exception):
                if version is not None:
                    client.delete_model_version(name, version)
                if created:
                    client.delete_registered_model(name)
            if isinstance(error, MlflowException):
                raise refused(error, "--alias", alias) from None
            raise
    return model_id, version, unfinished
