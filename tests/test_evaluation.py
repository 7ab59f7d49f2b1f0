"""Evaluation metrics against independent numpy computations, the one-pass collection on a
tiny multi-exit network, the output files, MLflow logging and the error paths."""

from __future__ import annotations

import itertools
import json

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState
from eed.engine.loops import collect_outputs
from eed.errors import CheckpointError, SourceError
from eed.metrics.classification import (
    agreement_counts,
    ensemble_logits,
    expected_calibration_error,
    running_ensemble_logits,
    top1_accuracy,
    topk_accuracy,
)
from eed.metrics.collected import Collected
from eed.metrics.summary import summarize
from eed.models.backbone import Backbone
from eed.models.multi_exit import MultiExitNet, conv_bn_relu
from eed.reporting.files import write_evaluation_outputs
from eed.reporting.tables import evaluation_tables
from eed.reporting.training_curves import plot_training_curves
from eed.stages.common import resolve_source
from eed.tracking import MlflowLogger, flatten_metrics, logged_run

K, N, C = 4, 300, 7
NAMES = ["exit1", "exit2", "exit3", "main"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def logits_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right more often for later classifiers, so numbers differ per classifier."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (N,), generator=generator)
    logits = 2 * torch.randn(K, N, C, generator=generator)
    for i in range(K):
        logits[i, torch.arange(N), labels] += 0.8 * (i + 1)
    return logits, labels


def tiny_net(num_classes: int = 5, seed: int = 0) -> MultiExitNet:
    """Three small conv stages (16x16 -> 8x8 -> 4x4), two exits."""
    torch.manual_seed(seed)
    stem = conv_bn_relu(3, 8, stride=1)
    backbone = Backbone(
        stem=stem,
        stages=[conv_bn_relu(8, 8, 1), conv_bn_relu(8, 12, 2), conv_bn_relu(12, 16, 2)],
        stage_channels=[8, 12, 16],
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(16, num_classes),
    )
    return MultiExitNet(backbone).eval()


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


# --------------------------------------------------------------------------- metrics on tensors


def test_ensemble_and_running_ensemble_accuracy_match_numpy(logits_labels):
    logits, labels = logits_labels
    z, y = logits.numpy().astype(np.float64), labels.numpy()
    expected_ensemble = (z.mean(axis=0).argmax(axis=1) == y).mean()
    assert float(topk_accuracy(ensemble_logits(logits), labels)) == pytest.approx(expected_ensemble)
    running = topk_accuracy(running_ensemble_logits(logits), labels)
    for j in range(1, K + 1):
        assert float(running[j - 1]) == pytest.approx((z[:j].mean(axis=0).argmax(axis=1) == y).mean())
    per_classifier = [(z[i].argmax(axis=1) == y).mean() for i in range(K)]
    assert top1_accuracy(logits, labels).tolist() == pytest.approx([*per_classifier, expected_ensemble])


def test_top5_matches_numpy(logits_labels):
    logits, labels = logits_labels
    z, y = logits.numpy(), labels.numpy()
    top5 = np.argsort(-z, axis=2)[:, :, :5]
    expected = (top5 == y[None, :, None]).any(axis=2).mean(axis=1)
    assert topk_accuracy(logits, labels, 5).tolist() == pytest.approx(expected.tolist())


def numpy_ece(logits: np.ndarray, labels: np.ndarray, bins: int) -> float:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return ece


def test_ece_matches_numpy(logits_labels):
    logits, labels = logits_labels
    ece = expected_calibration_error(logits, labels, bins=15)
    assert ece.shape == (K,)
    for i in range(K):
        assert float(ece[i]) == pytest.approx(numpy_ece(logits[i].double().numpy(), labels.numpy(), 15), abs=1e-6)
    # A perfectly confident, always-right classifier is perfectly calibrated.
    sure = torch.full((N, C), -1e4)
    sure[torch.arange(N), labels] = 1e4
    assert float(expected_calibration_error(sure, labels)) == pytest.approx(0.0, abs=1e-9)


def test_agreement_counts_sum_to_n_and_match_direct_count(logits_labels):
    logits, labels = logits_labels
    counts = agreement_counts(logits, labels)
    assert counts.shape == (K - 1, 2, 2)
    assert counts.sum(dim=(1, 2)).tolist() == [N] * (K - 1)
    correct = logits.numpy().argmax(axis=2) == labels.numpy()
    for i in range(K - 1):
        exit_ok, main_ok = correct[i], correct[-1]
        assert counts[i].tolist() == [
            [int(np.sum(exit_ok & main_ok)), int(np.sum(exit_ok & ~main_ok))],
            [int(np.sum(~exit_ok & main_ok)), int(np.sum(~exit_ok & ~main_ok))],
        ]


def test_summary_metrics_json_shape(logits_labels):
    logits, labels = logits_labels
    report = summarize(Collected(logits, labels), NAMES, "test")
    metrics = report.metrics()
    assert metrics["test"]["acc_ensemble"] == pytest.approx(float(top1_accuracy(logits, labels)[-1]))
    assert set(metrics["test"]) >= {"acc_exit1", "acc_main", "top5_main", "ece_main", "ece_ensemble"}
    assert metrics["running_ensemble"]["acc_upto_main"] == pytest.approx(metrics["test"]["acc_ensemble"])
    assert metrics["running_ensemble"]["acc_upto_exit1"] == pytest.approx(metrics["test"]["acc_exit1"])
    assert sum(metrics["agreement"]["exit2"].values()) == N
    flat = flatten_metrics(metrics)
    assert flat["test/acc_main"] == metrics["test"]["acc_main"] and "agreement/exit1/both_correct" in flat
    assert len(evaluation_tables(report)) == 2


def test_baseline_without_exits(tmp_path, logits_labels):
    logits, labels = logits_labels
    report = summarize(Collected(logits[-1:], labels), ["main"], "test")
    metrics = report.metrics()
    assert metrics["test"]["acc_main"] == metrics["test"]["acc_ensemble"] and metrics["agreement"] == {}
    assert [f.name for f in write_evaluation_outputs(report, tmp_path)] == ["metrics.json"]
    assert len(evaluation_tables(report)) == 1


# --------------------------------------------------------------------------- one pass over a loader


def reusing_loader(images: torch.Tensor, labels: torch.Tensor, batch: int):
    """Like FFCV: the same label buffer is overwritten for every batch."""
    buffer = torch.empty(batch, dtype=torch.long)
    for start in range(0, len(images), batch):
        size = min(batch, len(images) - start)
        buffer[:size] = labels[start : start + size]
        yield images[start : start + size], buffer[:size]


def test_collect_outputs_is_one_forward_pass_per_batch():
    net = tiny_net()
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(40, 3, 16, 16, generator=generator), torch.randint(0, 5, (40,), generator=generator)
    calls = []
    handle = net.stem.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    collected = collect_outputs(net, reusing_loader(images, labels, 16), "cpu", with_features=True)
    handle.remove()
    assert calls == [16, 16, 8]  # each image through the trunk exactly once
    assert collected.logits.shape == (3, 40, 5) and collected.input_shape == (3, 16, 16)
    assert torch.equal(collected.labels, labels)  # copied, not aliased to the reused buffer
    with torch.no_grad():
        reference = net(images)
    assert torch.allclose(collected.logits, torch.stack(reference.logits), atol=1e-5)
    assert len(collected.features) == 3 and collected.features[-1].shape == (40, 16)
    assert not net.training


def test_write_outputs_files_and_figures(tmp_path, logits_labels):
    logits, labels = logits_labels
    report = summarize(Collected(logits, labels), NAMES, "test")
    history = {
        f"{split}/acc_{name}": [(epoch, 0.1 * epoch + 0.01 * i) for epoch in range(1, 5)]
        for split in ("train", "val")
        for i, name in enumerate([*NAMES, "ensemble"])
    }
    # The training curves are the trainer's figures; evaluation draws its own.
    files = write_evaluation_outputs(report, tmp_path) + plot_training_curves(history, tmp_path / "figures")
    names = {f.name for f in files}
    assert names == {
        "metrics.json",
        "agreement.png",
        "training_curves.png",
        "stability.png",
        "agreement.svg",
        "training_curves.svg",
        "stability.svg",
    }
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(report.metrics()))
    for path in files:
        if path.suffix == ".png":
            assert_png(path)


# --------------------------------------------------------------------------- sources, MLflow, errors


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder}/mlflow.db"


def test_unknown_run_id_and_missing_checkpoint_are_clear_errors(tracking_uri, tmp_path):
    with pytest.raises(SourceError, match="neither a checkpoint file nor a run"):
        resolve_source("0123456789abcdef0123456789abcdef", tracking_uri)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_source(str(tmp_path / "missing.pt"), tracking_uri)


def test_checkpoint_of_other_architecture_or_classes_is_rejected():
    network = NetworkSpec("vgg19", 100, 8, True, class_names=tuple(f"c{i}" for i in range(100)))
    checkpoint = Checkpoint(network, {}, {}, TrainState())
    with pytest.raises(CheckpointError, match="'vgg19' model, expected 'resnet18'"):
        checkpoint.model(arch="resnet18", num_classes=100)
    with pytest.raises(CheckpointError, match="other classes"):
        checkpoint.check_classes([f"c{i}" for i in range(10)], "cifar10")
    with pytest.raises(CheckpointError, match="class 3"):
        checkpoint.check_classes([f"c{i}" if i != 3 else "other" for i in range(100)], "cifar100")
    checkpoint.check_classes([f"c{i}" for i in range(100)], "cifar100")  # same classes: fine


def test_log_child_run_nests_under_the_training_run(tracking_uri, tmp_path, logits_labels):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("evaluation-test", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"method": "eed", "arch": "tiny"}).info.run_id
    for epoch in (1, 2):
        client.log_metric(parent, "val/acc_main", 0.3 * epoch, step=epoch)
    logits, labels = logits_labels
    report = summarize(Collected(logits, labels), NAMES, "test")
    history = MlflowLogger(tracking_uri, parent).history()
    assert history == {"val/acc_main": [(1, 0.3), (2, 0.6)]}
    files = write_evaluation_outputs(report, tmp_path / "out")
    stage_run = MlflowLogger.for_stage(
        tracking_uri,
        "evaluate test best.pt",
        stage="evaluate",
        parent_run_id=parent,
        experiment="unused",
        tags={"split": "test", "source": "test"},
    )
    with logged_run(stage_run):
        stage_run.log_metrics(report.metrics(), step=0)
        stage_run.log_artifacts(files, tmp_path / "out")
    run = client.get_run(stage_run.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["method"] == "eed"
    assert run.info.run_name == "evaluate test best.pt" and run.info.status == "FINISHED"
    assert run.data.tags["eed.stage"] == "evaluate"
    assert run.data.metrics["test/acc_main"] == pytest.approx(report.metrics()["test"]["acc_main"])
    child = stage_run.run_id
    logged = {a.path for a in client.list_artifacts(child)} | {a.path for a in client.list_artifacts(child, "figures")}
    assert {"metrics.json", "figures/agreement.png"} <= logged


def test_evaluate_help():
    import typer

    from eed.commands.evaluate_cmd import evaluate

    app = typer.Typer()
    app.command()(evaluate)
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "checkpoint file" in result.output and "--no-log" in result.output and "--split" in result.output


# --------------------------------------------------------------------------- the whole `eed evaluate`


CLASS_NAMES = [f"class_{i:03d}" for i in range(10)]


@pytest.fixture
def fake_data(monkeypatch, tmp_path):
    """The data layer at its seam: a manifest and a loader over seeded random images."""
    from types import SimpleNamespace

    import eed.data

    generator = torch.Generator().manual_seed(5)
    splits = {
        split: (torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator))
        for split, n in (("test", 96), ("val", 64))
    }

    class Loader(list):
        warmed_up = False

        def warmup(self, console=None, show_status=True):  # what the FFCV loader compiles first
            self.warmed_up = True

    def make_loader(config, split, train=False, device=None):
        images, labels = splits[split]
        return Loader((images[i : i + 32], labels[i : i + 32]) for i in range(0, len(labels), 32))

    # The prepared files' records, as manifest.json holds them (MLflow's datasets are made from them).
    records = {
        split: SimpleNamespace(num_samples=n, sha256=f"sha256:{split:0>64}", bytes=n * 3072, file=f"{split}.beton")
        for split, n in (("train", 320), ("val", 64), ("test", 96))
    }
    manifest = SimpleNamespace(num_classes=10, class_names=list(CLASS_NAMES), splits=records, directory=tmp_path)
    monkeypatch.setattr(eed.data, "load_manifest", lambda config: manifest, raising=False)
    monkeypatch.setattr(eed.data, "make_loader", make_loader, raising=False)

    def read_split(config, split, indices=None):  # the raw pixels (the served model's input example)
        chosen = list(range(len(splits[split][1]))) if indices is None else list(indices)
        pixels = torch.randint(0, 256, (len(chosen), 3, 32, 32), dtype=torch.uint8, generator=generator)
        return SimpleNamespace(
            images=pixels,
            labels=splits[split][1][chosen],
            class_names=list(CLASS_NAMES),
            normalization=SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        )

    monkeypatch.setattr(eed.data, "read_split", read_split, raising=False)
    return splits


def e2e_config(*overrides: str):
    from eed.config import load_config

    return load_config(
        None,
        [
            "model.arch=resnet18",
            "model.width=4",
            "data.dataset=synthetic",
            "data.val_size=64",
            "train.device=cpu",
            "eval.thresholds=11",
            "eval.budgets=[0.0001, 1.0]",
            "tracking.experiment=evaluation-e2e",
            *overrides,
        ],
    )


def test_run_evaluation_end_to_end(tmp_path, tracking_uri, fake_data, monkeypatch):
    from mlflow.tracking import MlflowClient

    from eed.models.registry import create_model
    from eed.stages.evaluate import evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    config = e2e_config()
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("evaluation-e2e", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"method": "eed"}).info.run_id
    for epoch in (1, 2):
        for name in ("main", "ensemble"):
            client.log_metric(parent, f"train/acc_{name}", 0.2 * epoch, step=epoch)
            client.log_metric(parent, f"val/acc_{name}", 0.1 * epoch, step=epoch)
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 4).eval()
    checkpoint = Checkpoint(
        NetworkSpec("resnet18", 10, 4, True, class_names=tuple(CLASS_NAMES)),
        model.state_dict(),
        config.model_dump(),
        TrainState(epoch=2, run_id=parent),
    ).save(tmp_path / "best.pt")
    client.log_artifact(parent, str(checkpoint), "checkpoints")

    result = evaluate(config, str(checkpoint), out=tmp_path / "out", log=True)
    images, labels = fake_data["test"]
    with torch.no_grad():
        logits = torch.stack(model(images).logits)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["test"]["acc_main"] == pytest.approx(float((logits[-1].argmax(1) == labels).double().mean()))
    assert metrics["test"]["acc_ensemble"] == pytest.approx(float(top1_accuracy(logits, labels)[-1]))
    infeasible, loose = metrics["anytime"]["budget_0_0001"], metrics["anytime"]["budget_1"]
    assert infeasible["threshold"] is None and loose["threshold"] is not None and loose["gflops"] <= 1.0
    assert result.report.anytime.fit_split == "val"
    written = {path.name for path in result.files}
    assert {"metrics.json", "anytime.csv", "agreement.png", "anytime.png"} <= written
    child = client.get_run(result.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.run_name == "evaluate test best.pt"

    # The same model by run id: its checkpoints/best.pt artifact is downloaded.
    by_run = evaluate(config, parent, out=tmp_path / "by-run", log=False)
    assert by_run.report.metrics()["test"] == metrics["test"] and by_run.run_id is None

    with pytest.raises(CheckpointError, match="expected 'vgg19'"):
        evaluate(e2e_config("model.arch=vgg19"), str(checkpoint), out=tmp_path / "bad", log=False)


def test_evaluate_command_reports_bad_sources(tmp_path, tracking_uri, monkeypatch):
    import typer

    from eed.commands.evaluate_cmd import evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    app = typer.Typer()
    app.command()(evaluate)
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  arch: resnet18\n")
    result = CliRunner().invoke(
        app, ["0123456789abcdef0123456789abcdef", "--params", str(params)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 4 and "neither a checkpoint file nor a run" in result.output
    result = CliRunner().invoke(
        app, [str(tmp_path / "nope.pt"), "--params", str(params), "--no-log"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 4 and "checkpoint not found" in result.output


@pytest.mark.parametrize("calibrated", [False, True])
def test_evaluate_reports_calibration_and_a_guaranteed_threshold_fitted_on_val(tmp_path, fake_data, calibrated):
    """Temperatures are fitted on val and reported on test (before/after); with eval.calibrate
    the early-exit curve and thresholds use the scaled confidences; the guaranteed threshold is
    the one fixed-sequence testing picks on val, checked on test."""
    from eed.metrics.anytime import ClassifierCosts, sweep, threshold_grid
    from eed.metrics.calibration import apply_temperatures, fit_temperatures
    from eed.metrics.flops import profile_model
    from eed.metrics.guarantee import check_guarantee, fit_guaranteed_threshold
    from eed.models.registry import create_model
    from eed.stages.evaluate import evaluate

    config = e2e_config(
        f"eval.calibrate={str(calibrated).lower()}", "eval.max_drop=0.2", "eval.delta=0.2", "tracking.enabled=false"
    )
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 4).eval()
    checkpoint = Checkpoint(
        NetworkSpec("resnet18", 10, 4, True, class_names=tuple(CLASS_NAMES)),
        model.state_dict(),
        config.model_dump(),
        TrainState(epoch=2),
    ).save(tmp_path / "best.pt")
    result = evaluate(config, str(checkpoint), out=tmp_path / "out", log=False)
    with torch.no_grad():
        test_logits, val_logits = (torch.stack(model(fake_data[split][0]).logits) for split in ("test", "val"))
    temperatures = fit_temperatures(val_logits, fake_data["val"][1])
    report = result.report
    assert report.calibration.temperatures == pytest.approx(temperatures.tolist(), rel=1e-5)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["calibration"]["temperature_main"] == pytest.approx(float(temperatures[-1]), rel=1e-3)
    assert {"ece_before_exit1", "ece_after_exit1", "nll_before_main", "nll_after_main"} <= set(metrics["calibration"])

    used_test, used_val = test_logits, val_logits
    if calibrated:
        used_test = apply_temperatures(test_logits.double(), temperatures)
        used_val = apply_temperatures(val_logits.double(), temperatures)
    costs = ClassifierCosts.from_profile(profile_model(model, 32))
    grid = threshold_grid(config.eval.thresholds)
    curve = sweep(used_test, fake_data["test"][1], costs.anytime, grid, main_only_cost=costs.main_only)
    assert report.anytime.curve.accuracy.tolist() == pytest.approx(curve.accuracy.tolist())
    assert report.anytime.curve.gflops.tolist() == pytest.approx(curve.gflops.tolist())
    if calibrated:  # the scaled confidences give another curve here, so the check above can tell them apart
        raw = sweep(test_logits, fake_data["test"][1], costs.anytime, grid, main_only_cost=costs.main_only)
        assert raw.gflops.tolist() != pytest.approx(curve.gflops.tolist())
    fit = fit_guaranteed_threshold(used_val, fake_data["val"][1], grid, 0.2, 0.2, costs.anytime, costs.main_only)
    expected = check_guarantee(fit, used_test, fake_data["test"][1], costs.anytime)
    guaranteed = metrics["guaranteed"]
    assert guaranteed["feasible"] == int(fit.feasible) and guaranteed["held"] == int(expected["held"])
    # Chosen on val never dearer than the main output alone, one of the options (on test: as measured).
    assert fit.val_gflops <= costs.main_only and guaranteed["main_only_gflops"] == pytest.approx(costs.main_only)
    assert guaranteed["main_only"] == int(fit.main_only) and (guaranteed["threshold"] is None) == fit.main_only
    assert guaranteed["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-4)
    assert guaranteed["calibrated"] == int(calibrated)
    titles = [table.title for table in evaluation_tables(report)]
    assert any(title.startswith("Calibration") for title in titles)
    assert any(title.startswith("Guaranteed early exit") for title in titles)
