"""`eed export` and `eed register` on a real MLflow store (sqlite + local artifacts): the served
model logged into the training run with its torch.export programs and the thresholds fitted on
val, a stand-alone run for a checkpoint of no known run, the registry alias that deploys it, and
one clear line for what cannot be exported or registered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eed.data.augment import Normalizer
from eed.data.catalog import Normalization
from eed.errors import ConfigError, TrackingError
from tests.test_evaluation import CLASS_NAMES, e2e_config, fake_data  # noqa: F401 (fake_data: a fixture)

# Every test here reads its data through the fake data layer (seeded random images, 10 classes).
pytestmark = pytest.mark.usefixtures("fake_data")

# fake_data's normalization (mean 0.5, std 0.25) and a few raw images
NORMALIZE = Normalizer(Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
PIXELS = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)


def make_checkpoint(path: Path, run_id: str | None = None, exits: bool = True):
    from eed.engine.checkpoint import Checkpoint, NetworkSpec, ResumeState, TrainState
    from eed.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 10, 4, exits=exits).eval()
    checkpoint = Checkpoint(
        NetworkSpec("resnet18", 10, 4, exits, class_names=tuple(CLASS_NAMES)),
        model.state_dict(),
        e2e_config().model_dump(),
        TrainState(epoch=2, run_id=run_id),
        ResumeState({"state": {}, "param_groups": []}, {}, {}),
    ).save(path)
    return checkpoint, model


@pytest.fixture
def store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_experiment("evaluation-e2e", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client


@pytest.fixture
def training_run(store, tmp_path):
    """A finished training run with its checkpoints/best.pt artifact."""
    _uri, client = store
    run_id = client.create_run(client.get_experiment_by_name("evaluation-e2e").experiment_id).info.run_id
    checkpoint, model = make_checkpoint(tmp_path / "best.pt", run_id)
    client.log_artifact(run_id, str(checkpoint), "checkpoints")
    client.set_terminated(run_id)
    return run_id, model


def downloaded(uri: str, model_id: str, folder: Path) -> tuple[dict, Path]:
    """The served model's settings and its programs folder, downloaded."""
    import mlflow

    from eed.tracking import using_tracking_uri

    with using_tracking_uri(uri):
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(folder)))
    return json.loads((root / "artifacts" / "settings.json").read_text()), root / "artifacts" / "programs"


def test_export_logs_the_served_model_into_the_training_run(store, training_run, tmp_path):
    import mlflow.pyfunc

    from eed.inference.early_exit import cascade, predict
    from eed.inference.programs import load_programs
    from eed.stages.export import export
    from eed.tracking import served_model_of, using_tracking_uri

    (uri, client), (run_id, model) = store, training_run
    result = export(e2e_config("eval.max_drop=0.5", "eval.delta=0.2", "eval.calibrate=true"), run_id)
    assert result.run_id == run_id and served_model_of(uri, run_id) == result.served_model_id
    assert client.get_run(run_id).info.status == "FINISHED"  # logged into without re-opening it
    settings, programs = downloaded(uri, result.served_model_id, tmp_path / "model")
    assert settings["calibrated"] is True and len(settings["temperatures"]) == model.num_classifiers
    assert "budget_1" in settings["thresholds"] and "budget_0.0001" not in settings["thresholds"]  # infeasible
    assert settings["class_names"] == CLASS_NAMES

    # The logged model answers with the network's early exit at the fitted threshold, judged on
    # the calibrated confidences it was fitted on; the exported programs cascade to the same exits.
    threshold, temperatures = settings["thresholds"]["budget_1"], settings["temperatures"]
    expected = predict(
        model, NORMALIZE(torch.from_numpy(PIXELS).permute(0, 3, 1, 2)), threshold, temperatures=temperatures
    )
    with using_tracking_uri(uri):
        answer = mlflow.pyfunc.load_model(f"models:/{result.served_model_id}").predict(
            PIXELS, params={"budget": "budget_1"}
        )
    assert answer["exit_index"].tolist() == expected.exit_index.tolist()
    assert answer["class"].tolist() == expected.classes.tolist()
    assert answer["class_name"].tolist() == [CLASS_NAMES[c] for c in expected.classes.tolist()]
    again = cascade(
        load_programs(programs),
        NORMALIZE(torch.from_numpy(PIXELS).permute(0, 3, 1, 2)),
        threshold,
        temperatures=temperatures,
    )
    assert again.exit_index.tolist() == expected.exit_index.tolist()


def test_a_new_export_becomes_the_current_served_model_and_describes_itself(store, training_run, capfd):
    from eed.stages.export import export

    (_, client), (run_id, _) = store, training_run
    first = export(e2e_config(), run_id).served_model_id
    capfd.readouterr()
    second = export(e2e_config(), run_id).served_model_id
    said = capfd.readouterr()
    # MLflow's pickling warning, "Validating input example", its download bars: none of the user's business.
    assert said.err == "" and "Downloading artifacts" not in said.out and "CloudPickle" not in said.out, said
    assert client.get_logged_model(first).tags["eed.current"] == "false"
    newest = client.get_logged_model(second)
    assert newest.tags["eed.current"] == "true"
    assert "| threshold | τ | val top-1 % | val GFLOPs |" in newest.tags["mlflow.note.content"]
    assert "test" not in {metric.key.split("/")[-1].split("_")[0] for metric in newest.metrics}  # export: val only
    assert {metric.run_id for metric in newest.metrics} == {run_id}


def test_export_of_a_checkpoint_of_no_known_run_makes_a_run_for_it(store, tmp_path):
    from eed.stages.export import export
    from eed.tracking import served_model_of

    uri, client = store
    checkpoint, _ = make_checkpoint(tmp_path / "elsewhere.pt")
    result = export(e2e_config(), str(checkpoint))
    run = client.get_run(result.run_id)
    assert run.info.run_name == "export val elsewhere.pt" and run.data.tags["eed.stage"] == "export"
    assert served_model_of(uri, result.run_id) == result.served_model_id
    settings, _ = downloaded(uri, result.served_model_id, tmp_path / "model")
    assert settings["calibrated"] is False  # eval.calibrate is false by default


def test_what_cannot_be_exported_is_one_clear_error(store, tmp_path):
    from eed.stages.export import export

    checkpoint, _ = make_checkpoint(tmp_path / "best.pt")
    with pytest.raises(ConfigError, match="tracking.enabled is false"):
        export(e2e_config("tracking.enabled=false"), str(checkpoint))
    with pytest.raises(ConfigError, match="data.val_size is 0"):
        export(e2e_config("data.val_size=0"), str(checkpoint))
    baseline, _ = make_checkpoint(tmp_path / "baseline.pt", exits=False)
    with pytest.raises(ConfigError, match="no exits"):
        export(e2e_config(), str(baseline))


def test_register_points_an_alias_at_a_new_version(store, training_run, tmp_path):
    import mlflow.pyfunc

    from eed.stages.export import export, register
    from eed.tracking import using_tracking_uri

    (uri, client), (run_id, _) = store, training_run
    with pytest.raises(TrackingError, match=f"run {run_id} has no served model: `eed export {run_id}`"):
        register(e2e_config(), run_id, "champion")
    first = export(e2e_config(), run_id)
    registered = register(e2e_config(), run_id, "champion")
    assert (registered.name, registered.version, registered.served_model_id) == (
        "evaluation-e2e",
        "1",
        first.served_model_id,
    )
    with using_tracking_uri(uri):
        by_alias = mlflow.pyfunc.load_model("models:/evaluation-e2e@champion")
        by_id = mlflow.pyfunc.load_model(f"models:/{first.served_model_id}")
    assert by_alias.predict(PIXELS, params={"threshold": 0.2}).equals(by_id.predict(PIXELS, params={"threshold": 0.2}))

    second = export(e2e_config(), run_id)  # a newer served model of the same run: the alias follows it
    other = register(e2e_config(), run_id, "champion", name="cifar-exits")
    assert (other.version, other.served_model_id) == ("1", second.served_model_id)
    assert client.get_model_version_by_alias("cifar-exits", "champion").source == f"models:/{second.served_model_id}"
    assert register(e2e_config(), run_id, "champion").version == "2"
    assert str(client.get_model_version_by_alias("evaluation-e2e", "champion").version) == "2"


def test_register_command_refuses_a_bad_alias_in_one_line(store, training_run, tmp_path):
    from eed.cli import app
    from eed.stages.export import export

    run_id, _ = training_run
    export(e2e_config(), run_id)
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  arch: resnet18\n  width: 4\ntracking:\n  experiment: evaluation-e2e\n")
    result = CliRunner().invoke(
        app, ["register", run_id, "--alias", "v3", "--params", str(params)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--alias 'v3'" in lines[0], result.output
    from mlflow.tracking import MlflowClient

    assert MlflowClient(store[0]).search_registered_models() == []  # nothing left half-registered
    result = CliRunner().invoke(
        app, ["register", run_id, "--alias", "prod", "--params", str(params)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "models:/evaluation-e2e@prod" in result.output


# --------------------------------------------------------------------------- interrupted while logging


def export_in_child(run_id: str, params: Path, fault: str, stderr: Path) -> int:
    """`eed export RUN` in a forked child (it keeps the fake data layer) whose served-model logging is
    struck by ``fault`` (``kill9`` or ``sigterm``) once MLflow has begun; the child's exit status."""
    import os
    import signal
    import sys

    pid = os.fork()
    if pid == 0:  # never returns into pytest
        code = 1
        try:
            import mlflow.pyfunc

            from eed.cli import app

            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive a fork
            sys.stderr = open(stderr, "w", buffering=1)  # noqa: SIM115 - the child ends with os._exit
            original = mlflow.pyfunc.log_model

            def struck(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL if fault == "kill9" else signal.SIGTERM)
                return original(*args, **kwargs)

            mlflow.pyfunc.log_model = struck
            app(["export", run_id, "--params", str(params)])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.parametrize(("fault", "status"), [("kill9", -9), ("sigterm", 143)])
def test_an_export_stopped_while_logging_leaves_the_run_finished_and_its_model_unused(
    store, training_run, tmp_path, fault, status
):
    """The served model is logged into the run without re-opening it: a kill -9 or SIGTERM then
    leaves the finished run as it was (status and end time); the model that never finished is
    skipped, said so, by register and export; SIGTERM is one line, exit 143."""
    from eed.stages.export import export, register
    from eed.tracking import served_model_of

    (uri, client), (run_id, _) = store, training_run
    before = client.get_run(run_id).info
    first = export(e2e_config(), run_id)
    params = tmp_path / "params.yaml"
    params.write_text(
        "model:\n  arch: resnet18\n  width: 4\ndata:\n  dataset: synthetic\n  val_size: 64\n"
        "train:\n  device: cpu\neval:\n  thresholds: 11\ntracking:\n  experiment: evaluation-e2e\n"
    )
    stderr = tmp_path / "stderr.txt"
    assert export_in_child(run_id, params, fault, stderr) == status
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)
    if fault == "sigterm":
        lines = [line for line in stderr.read_text().splitlines() if line.strip()]
        assert lines == ["error: stopped by SIGTERM while logging the served model"], lines
    experiment = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    assert sorted(str(model.status) for model in models) == sorted(
        ["READY", "PENDING" if fault == "kill9" else "FAILED"]
    ), [model.status for model in models]
    assert served_model_of(uri, run_id) == first.served_model_id  # the newest model that finished
    registered = register(e2e_config(), run_id, "champion")
    assert registered.served_model_id == first.served_model_id and registered.unfinished == 1
