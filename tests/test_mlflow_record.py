"""What a user finds in MLflow after a training, an evaluation and the RDMs, read back from a
real sqlite store: the experiment opens in the "Model training" view, the training run has its
datasets, MLflow's source tags, a description and system metrics; the stage runs are named by
what they did, carry their params and last as long as the work did; the logged model says what
its input and output axes are and shows its test metrics."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from eed import data as eed_data
from eed.config import flatten
from eed.engine.checkpoint import Checkpoint
from eed.engine.trainer import train
from eed.stages.evaluate import evaluate
from eed.stages.rdm import rdm
from eed.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, using_tracking_uri
from tests.test_train import synthetic_config


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("record")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a sample within a seconds-long run
        config = synthetic_config(
            tmp_path, **{"eval.rdm_samples": 60, "eval.rdm_classes": 3, "eval.thresholds": 11, "eval.budgets": [0.001]}
        )
        result = train(config, tmp_path / "out" / "train")
    timings = {}
    for name, stage in (("evaluate", evaluate), ("rdm", rdm)):
        start = time.time()
        outcome = stage(config, log=True)
        timings[name] = (outcome.run_id, 1000 * (time.time() - start))
        if name == "evaluate":
            result.served_model_id = outcome.served_model_id
    return config, result, timings


def test_experiment_opens_in_the_model_training_view(record):
    config, result, _ = record
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment(client.get_run(result.run_id).info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    note = experiment.tags["mlflow.note.content"]
    # Markdown rendered as HTML: angle brackets only inside code spans (`<method>`), never as bare tags.
    assert "`<method>-<arch>-s<seed>`" in note and "<" not in re.sub(r"`[^`]*`", "", note), note


def test_training_run_has_datasets_source_tags_description_and_system_metrics(record):
    config, result, _ = record
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(result.run_id)
    manifest = eed_data.load_manifest(config)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic-train", "synthetic-val", "synthetic-test"}
    contexts = {name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for name, i in inputs.items()}
    assert contexts == {"synthetic-train": "training", "synthetic-val": "validation", "synthetic-test": "test"}
    test_set = inputs["synthetic-test"].dataset
    assert test_set.digest == manifest.splits["test"].sha256.removeprefix("sha256:")[:32]
    assert f'"num_samples": {manifest.splits["test"].num_samples}' in test_set.profile
    assert manifest.splits["test"].file in test_set.source

    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"] and tags["mlflow.source.name"]
    assert len(tags["mlflow.source.git.commit"]) == 40 and "git_commit" not in tags
    assert tags["mlflow.note.content"].startswith("eed: CE on 4 classifiers")
    assert "resnet18 width 4 on synthetic, 2 epochs" in tags["mlflow.note.content"]
    system = [name for name in run.data.metrics if name.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system


def test_stage_runs_are_named_by_what_they_did_with_params_and_real_durations(record):
    config, result, timings = record
    client = MlflowClient(config.tracking.uri)
    parent_metrics = client.get_run(result.run_id).data.metrics
    for stage, (run_id, wall_ms) in timings.items():
        run = client.get_run(run_id)
        assert run.info.run_name == f"{stage} test best.pt"
        assert run.data.tags["mlflow.parentRunId"] == result.run_id and run.data.tags["eed.stage"] == stage
        assert run.data.params["split"] == "test" and run.data.params["checkpoint"] == "best.pt"
        assert run.data.params["checkpoint_epoch"] == str(Checkpoint.load(result.best_checkpoint).epoch)
        duration = run.info.end_time - run.info.start_time
        # The run spans the stage's work, not just the logging at its end.
        assert 0.6 * wall_ms <= duration <= wall_ms + 1000, (stage, duration, wall_ms)
        for name, value in run.data.metrics.items():  # nothing the training run holds with the same value
            assert parent_metrics.get(name) != value, name
    evaluate_run = client.get_run(timings["evaluate"][0])
    assert evaluate_run.data.params["eval.thresholds"] == "11" and "test/top5_main" in evaluate_run.data.metrics
    # Every eval key that changes what evaluate computes is a param of its run.
    for key in ("eval.ece_bins", "eval.budgets", "eval.calibrate", "eval.max_drop", "eval.delta", "data.val_size"):
        assert evaluate_run.data.params[key] == flatten(config)[key], key
    assert client.get_run(timings["rdm"][0]).data.params["eval.rdm_samples"] == "60"
    assert not [a for a in client.list_artifacts(timings["evaluate"][0], "figures") if "training" in a.path]


def test_logged_model_records_its_input_output_and_test_metrics(record):
    config, result, _ = record
    client = MlflowClient(config.tracking.uri)
    manifest = eed_data.load_manifest(config)
    with using_tracking_uri(config.tracking.uri):
        info = mlflow.models.get_model_info(f"runs:/{result.run_id}/model")
        model = mlflow.models.Model.load(f"runs:/{result.run_id}/model")
        example = model.load_input_example(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/model"))
    metadata = info.metadata
    assert metadata["class_names"] == list(manifest.class_names)
    assert metadata["classifiers"] == ["exit1", "exit2", "exit3", "main"]
    assert metadata["normalization"] == dict(manifest.normalization) and metadata["checkpoint"] == "best.pt"
    # The example is the first test images, normalized as the loaders normalize them (not noise).
    samples = eed_data.read_split(config, "test", indices=[0, 1])
    expected = eed_data.Normalizer(samples.normalization)(samples.images).numpy()
    assert np.allclose(np.asarray(example), expected, atol=1e-6)

    logged = client.get_logged_model(info.model_id)
    linked = {m.key: m for m in logged.metrics}
    assert {"test/acc_main", "test/acc_ensemble", "test/max_acc_main"} <= set(linked)
    assert linked["test/acc_main"].dataset_name == "synthetic-test"
    assert linked["test/acc_main"].value == client.get_run(result.run_id).data.metrics["test/acc_main"]


def test_a_store_copied_with_its_checkout_is_refused_not_written_into_the_original(tmp_path):
    """Experiments keep absolute artifact folders: a copied mlflow.db would put the copy's
    artifacts into the original checkout's mlartifacts/. One line says so and what to do."""
    import shutil

    from eed.errors import TrackingError
    from eed.tracking import ensure_experiment

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    experiment_id = ensure_experiment("eed", f"sqlite:///{original / 'mlflow.db'}")
    assert ensure_experiment("eed", f"sqlite:///{original / 'mlflow.db'}") == experiment_id  # its own: fine
    shutil.copytree(original, copy)
    with pytest.raises(TrackingError, match="made at another path") as error:
        ensure_experiment("eed", f"sqlite:///{copy / 'mlflow.db'}")
    message = str(error.value)
    assert "\n" not in message and str(original / "mlartifacts") in message and "tracking.uri" in message
    assert not (original / "mlartifacts").exists() or not any((original / "mlartifacts").iterdir())


def test_evaluate_logs_a_served_early_exit_model_with_its_fitted_thresholds(record):
    """The evaluate stage logs the network as a served model of the training run: raw uint8
    images in, per image the class, its name, the exit taken and the GFLOPs spent."""
    config, result, _ = record
    client = MlflowClient(config.tracking.uri)
    logged = client.get_logged_model(result.served_model_id)
    assert logged.source_run_id == result.run_id and logged.name == "served"
    training = client.get_run(result.run_id).info  # logging into it later leaves its end as it was
    assert training.status == "FINISHED" and training.end_time < client.get_run(timings_of(record)).info.start_time
    samples = eed_data.read_split(config, "test", indices=list(range(8)))
    raw = samples.images.permute(0, 2, 3, 1).numpy()
    with using_tracking_uri(config.tracking.uri):
        served = mlflow.pyfunc.load_model(f"models:/{result.served_model_id}")
    everything = served.predict(raw, params={"threshold": 1.5})  # above every confidence: the main output
    assert list(everything["exit"]) == ["main"] * 8
    assert set(everything["class_name"]) <= set(samples.class_names)
    earliest = served.predict(raw, params={"threshold": 0.0})
    assert list(earliest["exit"]) == ["exit1"] * 8 and (earliest["gflops"] < everything["gflops"]).all()


def test_the_served_model_says_what_it_is_and_holds_its_results(record):
    """The served model's page is not empty: a description of its rule and thresholds, and the early-exit
    results the evaluate run measured (val, where they were fitted, and test) linked to it; the
    evaluate run lists it among its outputs; it is marked its run's current served model."""
    config, result, _ = record
    client = MlflowClient(config.tracking.uri)
    logged = client.get_logged_model(result.served_model_id)
    description = logged.tags["mlflow.note.content"]
    assert (
        description.startswith("**Early exit served by eed** (exit rule `confidence`).")
        and "| `budget_0.001` |" not in description
    )
    assert "| threshold | τ | val top-1 % | val GFLOPs | test top-1 % | test GFLOPs |" in description
    assert logged.tags["eed.current"] == "true"
    evaluation = json.loads((Path(config.paths.out_dir) / "evaluate" / "metrics.json").read_text())
    linked = {metric.key: metric for metric in logged.metrics}
    guaranteed = evaluation["guaranteed"]
    assert linked["served/max_drop/test_acc"].value == pytest.approx(guaranteed["accuracy"])
    assert linked["served/max_drop/test_acc"].run_id == timings_of(record)  # measured by the evaluate run
    assert {"served/max_drop/val_acc", "served/max_drop/val_gflops", "served/max_drop/test_gflops"} <= set(linked)
    # Each number names the split it was measured on, a dataset the evaluate run lists as its input.
    assert {key: metric.dataset_name for key, metric in linked.items()} == {
        key: f"synthetic-{key.rsplit('/', 1)[1].split('_')[0]}" for key in linked
    }
    inputs = {d.dataset.name: d.dataset.digest for d in client.get_run(timings_of(record)).inputs.dataset_inputs}
    assert {metric.dataset_name: metric.dataset_digest for metric in linked.values()} == inputs
    outputs = client.get_run(timings_of(record)).outputs
    assert [output.model_id for output in outputs.model_outputs] == [result.served_model_id]


def timings_of(record) -> str:
    """The evaluate run's id."""
    return record[2]["evaluate"][0]
