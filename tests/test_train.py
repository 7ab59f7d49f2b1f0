"""The training engine: every method end to end, MLflow contents, resume exactness,
signals, kill -9, NaN, bad checkpoints, DDP with gloo, and a real-data smoke run."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from eed.config import load_config
from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState
from eed.engine.trainer import train
from eed.errors import CheckpointError, NonFiniteLossError
from eed.methods import method_names
from eed.stages.report import training_figures
from eed.stages.train import train as train_stage
from eed.tracking import using_tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def synthetic_overrides(tmp_path: Path, **extra: object) -> list[str]:
    values = {
        "data.dataset": "synthetic",
        "data.backend": "tensor",
        "data.val_size": 64,
        "data.prepared_dir": str(tmp_path / "prepared"),
        "data.num_workers": 1,
        "data.synthetic.num_train": 384,
        "data.synthetic.num_test": 96,
        "data.synthetic.num_classes": 10,
        "data.train_subset": 0,
        "model.width": 4,
        "train.epochs": 2,
        "train.batch_size": 64,
        "train.lr": 0.05,
        "train.deterministic": True,
        "train.device": "cpu",
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "paths.out_dir": str(tmp_path / "out"),
    }
    values.update(extra)
    return [f"{k}={json.dumps(v) if isinstance(v, (bool, list)) else v}" for k, v in values.items()]


def synthetic_config(tmp_path: Path, **extra: object):
    from eed.data import prepare

    config = load_config(None, synthetic_overrides(tmp_path, **extra))
    prepare(config)
    return config


def state_allclose(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_two_epochs_and_logs_a_complete_run(tmp_path, method):
    # eed trains through the FFCV loader (worker threads, reused buffers), the others in memory.
    backend = "ffcv" if method == "eed" else "tensor"
    config = synthetic_config(tmp_path, method=method, **{"train.deterministic": False, "data.backend": backend})
    # The train stage (its summary files), then the figures the report stage and `eed train` draw after it.
    result = train_stage(config, out=tmp_path / "out" / "train")
    training_figures(config, tmp_path / "out" / "train")
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == method and run.data.params["loss.alpha"] == "1.0"
    assert run.data.tags["method"] == method and run.data.tags["arch"] == "resnet18"
    names = ["main", "ensemble"] if method == "baseline" else ["exit1", "exit2", "exit3", "main", "ensemble"]
    for name in names:
        history = client.get_metric_history(result.run_id, f"val/acc_{name}")
        assert [m.step for m in history] == [1, 2]
        assert 0.0 <= history[-1].value <= 1.0
        assert f"test/acc_{name}" in run.data.metrics
    for name in ("train/loss", "lr", "epoch_time_s", "throughput_img_s"):
        assert len(client.get_metric_history(result.run_id, name)) == 2
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"checkpoints", "figures", "config.yaml"} <= artifacts
    checkpoints = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/last.pt", "checkpoints/best.pt"}
    figures = [a.path for a in client.list_artifacts(result.run_id, "figures")]
    assert figures and {Path(p).suffix for p in figures} == {".png", ".svg"}
    assert {Path(p).stem for p in figures if p.endswith(".png")} == {
        Path(p).stem for p in figures if p.endswith(".svg")
    }
    summary = json.loads((tmp_path / "out" / "train" / "metrics.json").read_text())
    assert summary["epochs"] == 2 and "acc_main" in summary["test"]
    checkpoint = Checkpoint.load(result.last_checkpoint)
    assert checkpoint.epoch == 2 and checkpoint.network.exits == (method != "baseline")
    assert checkpoint.run_id == result.run_id
    assert_test_accuracy_per_epoch_and_its_max(client, run, names, tmp_path / "out" / "train")
    if method in ("baseline", "eed"):  # exporting is slow: check the logged model on two methods
        model_uri = f"runs:/{result.run_id}/model"
        with using_tracking_uri(config.tracking.uri):
            loaded = mlflow.pytorch.load_model(model_uri)
        images = torch.randn(3, 3, 32, 32)
        logits = loaded(images)
        k = 1 if method == "baseline" else 4
        assert tuple(logits.shape) == (3, k, 10)
        selected = Checkpoint.load(result.best_checkpoint).model().eval()
        expected = torch.stack(selected(images).logits, dim=1)
        assert torch.allclose(logits, expected, atol=1e-4)


def test_the_training_run_shows_every_exit_in_one_chart_while_it_trains(tmp_path):
    """MLflow draws each metric in a chart of its own: the train stage logs Fig. 5 (every classifier per
    epoch, one panel per split) into its run at every checkpoint, before the report stage draws it."""
    import matplotlib.image

    from eed.engine.trainer import Callback
    from eed.reporting.records import figure_caption
    from eed.stages.train import LiveStabilityFigure

    config = synthetic_config(tmp_path, **{"train.epochs": 2})
    drawn: dict[int, np.ndarray] = {}

    class Watcher(Callback):  # runs after the figure's callback, while training goes on
        def on_epoch_saved(self, epoch, history, logger):
            folder = tmp_path / f"after-epoch-{epoch}"
            folder.mkdir()
            path = MlflowClient(config.tracking.uri).download_artifacts(
                logger.run_id, "figures/stability.png", str(folder)
            )
            drawn[epoch] = matplotlib.image.imread(path)

    live = LiveStabilityFigure(figure_caption(config), min_interval_s=0)
    result = train(config, tmp_path / "engine", callbacks=[live, Watcher()])
    assert sorted(drawn) == [1, 2] and all(image.shape[0] > 100 and image.shape[1] > 100 for image in drawn.values())
    assert not np.array_equal(drawn[1], drawn[2])  # redrawn with the second epoch
    assert MlflowClient(config.tracking.uri).get_run(result.run_id).info.status == "FINISHED"
    # The train stage itself logs it (no report stage has run here).
    staged = train_stage(config, out=tmp_path / "stage")
    logged = [a.path for a in MlflowClient(config.tracking.uri).list_artifacts(staged.run_id, "figures")]
    assert logged == ["figures/stability.png"], logged


def test_the_live_figure_is_drawn_at_most_once_per_interval():
    from eed.stages.train import LiveStabilityFigure

    class Logger:
        def __init__(self):
            self.figures = []

        def log_figure(self, figure, path):
            self.figures.append(path)

    history = {"val/acc_main": [(1, 0.1)], "val/acc_exit1": [(1, 0.05)]}
    logger, rare = Logger(), LiveStabilityFigure("caption", min_interval_s=3600)
    for epoch in (1, 2, 3):
        rare.on_epoch_saved(epoch, history, logger)
    assert logger.figures == ["figures/stability.png"]  # the first, then nothing within the hour
    logger, every = Logger(), LiveStabilityFigure("caption", min_interval_s=0)
    for epoch in (1, 2, 3):
        every.on_epoch_saved(epoch, history, logger)
    assert len(logger.figures) == 3


def assert_test_accuracy_per_epoch_and_its_max(client, run, names, out_dir):
    """Every epoch's test accuracy is logged; test/max_acc_* is its maximum over the epochs, the
    paper's number, labelled as such in the run's tags and metrics.json."""
    summary = json.loads((out_dir / "metrics.json").read_text())
    rows = list(csv.DictReader((out_dir / "accuracy.csv").open()))
    for name in names:
        per_epoch = client.get_metric_history(run.info.run_id, f"test/epoch_acc_{name}")
        assert [m.step for m in per_epoch] == [1, 2]
        best = max(per_epoch, key=lambda m: (m.value, -m.step))
        assert run.data.metrics[f"test/max_acc_{name}"] == pytest.approx(best.value)
        assert run.data.metrics[f"test/max_acc_epoch_{name}"] == best.step
        assert summary["test_max_over_epochs"][f"acc_{name}"] == pytest.approx(best.value)
        tested = [float(r["top1_pct"]) for r in rows if r["split"] == "test" and r["classifier"] == name]
        assert tested == pytest.approx([round(100 * m.value, 2) for m in per_epoch], abs=0.006)
    assert run.data.tags["eed.meaning.test/max_acc"] == "max over epochs, as in the paper; selected on test, optimistic"
    assert "selected on validation" in run.data.tags["eed.meaning.test/acc"]


def test_without_a_validation_split_the_last_epoch_is_selected_and_labelled_so(tmp_path):
    """val_size 0 (the paper's protocol): no val/acc_*, best.pt is the last epoch, and test/acc_*
    are that epoch's test accuracies (the max over epochs is logged apart)."""
    config = synthetic_config(tmp_path, **{"data.val_size": 0})
    result = train_stage(config, out=tmp_path / "out" / "train")
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(result.run_id)
    assert not any(name.startswith("val/") for name in run.data.metrics)
    assert Checkpoint.load(result.best_checkpoint).epoch == 2
    last_epoch = client.get_metric_history(result.run_id, "test/epoch_acc_main")[-1].value
    assert run.data.metrics["test/acc_main"] == pytest.approx(last_epoch)
    assert "last epoch" in run.data.tags["eed.meaning.test/acc"]
    assert_test_accuracy_per_epoch_and_its_max(client, run, ["exit1", "main", "ensemble"], tmp_path / "out" / "train")


def test_the_logged_model_is_the_selected_checkpoint_not_the_last_epoch(tmp_path, monkeypatch):
    import eed.engine.trainer as T

    config = synthetic_config(tmp_path, **{"train.deterministic": False})
    import eed.data

    original_loader, split_of = eed.data.make_loader, {}

    def make_loader(config, split, **options):  # remember which loader is the validation split's
        loader = original_loader(config, split, **options)
        split_of[id(loader)] = split
        return loader

    original, val_calls = T.validate, []

    def validate(model, loader, *args, **kwargs):  # validation peaks at epoch 1, so best.pt is epoch 1's
        accuracy = original(model, loader, *args, **kwargs)
        if split_of.get(id(loader)) != "val":
            return accuracy
        val_calls.append(1)
        return {**accuracy, "main": 0.9 if len(val_calls) == 1 else 0.1}

    monkeypatch.setattr(eed.data, "make_loader", make_loader)
    monkeypatch.setattr(T, "validate", validate)
    result = train(config, tmp_path / "out" / "train")
    best, last = Checkpoint.load(result.best_checkpoint), Checkpoint.load(result.last_checkpoint)
    assert (best.epoch, last.epoch) == (1, 2)
    with using_tracking_uri(config.tracking.uri):
        loaded = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
        info = mlflow.models.get_model_info(f"runs:/{result.run_id}/model")
    images = torch.randn(3, 3, 32, 32)
    logged = loaded(images)
    for checkpoint, same in ((best, True), (last, False)):
        expected = torch.stack(checkpoint.model().eval()(images).logits, dim=1)
        assert torch.allclose(logged, expected, atol=1e-4) == same
    assert {k: info.metadata[k] for k in ("checkpoint", "epoch", "selected_on")} == {
        "checkpoint": "best.pt",
        "epoch": 1,
        "selected_on": "val",
    }


def test_deterministic_runs_repeat_exactly(tmp_path):
    config = synthetic_config(tmp_path, **{"tracking.enabled": False})
    first = train(config, tmp_path / "a")
    second = train(config, tmp_path / "b")
    assert first.history["train/loss"] == second.history["train/loss"]
    assert state_allclose(
        Checkpoint.load(first.last_checkpoint).weights, Checkpoint.load(second.last_checkpoint).weights, atol=0
    )


RUNNER = textwrap.dedent("""
    import os, signal, sys
    import eed.engine.trainer as T
    from eed.config import load_config
    mode, out, *overrides = sys.argv[1:]
    config = load_config(None, overrides)
    if mode == "kill9-after-epoch-1":
        # Dies abruptly in the first evaluation after epoch 1's checkpoint was written (epoch 2's).
        original, last = T.validate, os.path.join(out, "checkpoints", "last.pt")
        def validate(*args, **kwargs):
            if os.path.exists(last) and T.Checkpoint.load(last).epoch >= 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        T.validate = validate
    if mode == "sigterm-mid-epoch-2":
        from eed.objectives import ExitEnsembleObjective
        original_step, steps = ExitEnsembleObjective.forward, []
        def forward(self, output, target):
            steps.append(1)
            if len(steps) == 8:  # epoch 2 has steps 6..10 (5 steps per epoch): stop at its 3rd
                os.kill(os.getpid(), signal.SIGTERM)
            return original_step(self, output, target)
        ExitEnsembleObjective.forward = forward
    try:
        T.train(config, out, resume="auto")
    except T.TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
""")


def run_runner(mode: str, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, mode, str(out), *overrides],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )


def test_resume_after_kill_minus_9_matches_a_straight_run(tmp_path):
    overrides = synthetic_overrides(tmp_path)
    config = synthetic_config(tmp_path)
    straight = train(config, tmp_path / "straight")

    out = tmp_path / "killed"
    killed = run_runner("kill9-after-epoch-1", out, overrides)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Checkpoint.load(out / "checkpoints" / "last.pt").epoch == 1
    resumed = run_runner("plain", out, overrides)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from epoch 1" in resumed.stderr

    final = Checkpoint.load(out / "checkpoints" / "last.pt")
    assert final.epoch == 2
    assert state_allclose(final.weights, Checkpoint.load(straight.last_checkpoint).weights)
    client = MlflowClient(config.tracking.uri)
    run_id = final.run_id
    assert run_id == Checkpoint.load(out / "checkpoints" / "best.pt").run_id
    assert [m.step for m in client.get_metric_history(run_id, "val/acc_main")] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    # The straight run and the resumed run are the only two runs in the store.
    assert len(client.search_runs([client.get_experiment_by_name("eed").experiment_id])) == 2


def test_sigterm_checkpoints_mid_epoch_ends_run_killed_and_resumes_exactly(tmp_path):
    overrides = synthetic_overrides(tmp_path)
    config = synthetic_config(tmp_path)
    straight = train(config, tmp_path / "straight")

    out = tmp_path / "stopped"
    stopped = run_runner("sigterm-mid-epoch-2", out, overrides)
    assert stopped.returncode == 143, stopped.stderr
    assert "SIGTERM at epoch 2" in stopped.stderr
    checkpoint = Checkpoint.load(out / "checkpoints" / "last.pt")
    assert (checkpoint.epoch, checkpoint.state.step) == (1, 3)
    client = MlflowClient(config.tracking.uri)
    assert client.get_run(checkpoint.run_id).info.status == "KILLED"

    resumed = run_runner("plain", out, overrides)
    assert resumed.returncode == 0, resumed.stderr
    final = Checkpoint.load(out / "checkpoints" / "last.pt")
    assert final.run_id == checkpoint.run_id
    assert state_allclose(final.weights, Checkpoint.load(straight.last_checkpoint).weights)
    assert client.get_run(final.run_id).info.status == "FINISHED"
    # Epoch 2, trained in two parts, reports all of its steps: the same mean loss and accuracy
    # as the straight run's epoch 2 (deterministic steps), once.
    for name in ("train/loss", "train/acc_main"):
        resumed_points = client.get_metric_history(final.run_id, name)
        straight_points = client.get_metric_history(straight.run_id, name)
        assert [m.step for m in resumed_points] == [1, 2]
        assert resumed_points[-1].value == pytest.approx(straight_points[-1].value, rel=1e-5)


def test_non_finite_loss_stops_with_epoch_step_and_terms_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from eed.objectives import ExitEnsembleObjective

    config = synthetic_config(tmp_path)
    original, steps = ExitEnsembleObjective.forward, []

    def poisoned(self, output, target):
        result = original(self, output, target)
        steps.append(1)
        if len(steps) == 7:  # epoch 2, step 2
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(ExitEnsembleObjective, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 2, in steps \d-\d of 5 \(at step \d: ce_exit1=.*ce_main="
    ) as error:
        train(config, out)
    first, last = map(int, re.search(r"steps (\d)-(\d)", str(error.value)).groups())
    assert first <= 2 <= last  # the poisoned step lies in the range the message names
    kept = Checkpoint.load(out / "checkpoints" / "last.pt")
    assert kept.epoch == 1 and all(torch.isfinite(v).all() for v in kept.weights.values() if v.is_floating_point())
    client = MlflowClient(config.tracking.uri)
    assert client.get_run(kept.run_id).info.status == "FAILED"


def test_bad_checkpoints_give_clear_errors(tmp_path):
    for seed in range(20):  # garbage of many shapes: every one is a CheckpointError
        not_a_checkpoint = tmp_path / f"noise{seed}.pt"
        not_a_checkpoint.write_bytes(np.random.default_rng(seed).bytes(64 + 37 * seed))
        with pytest.raises(CheckpointError, match="not a readable eed checkpoint"):
            Checkpoint.load(not_a_checkpoint)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an eed checkpoint"):
        Checkpoint.load(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "missing.pt")

    config = synthetic_config(tmp_path, **{"train.epochs": 1, "tracking.enabled": False})
    result = train(config, tmp_path / "one")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(result.last_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable eed checkpoint"):
        Checkpoint.load(truncated)
    checkpoint = Checkpoint.load(result.last_checkpoint)
    with pytest.raises(CheckpointError, match="'resnet18' model, expected 'vgg19'"):
        checkpoint.model(arch="vgg19")
    with pytest.raises(CheckpointError, match="10 classes, but the data has 100"):
        checkpoint.model(num_classes=100)
    # A checkpoint whose weights belong to another network.
    checkpoint.network = dataclasses.replace(checkpoint.network, width=8)
    mismatched = checkpoint.save(tmp_path / "mismatched.pt")
    with pytest.raises(CheckpointError, match="do not fit resnet18"):
        Checkpoint.load(mismatched).model()
    # Resuming another configuration's checkpoint explicitly is refused.
    other = load_config(None, synthetic_overrides(tmp_path, **{"model.arch": "vgg19", "tracking.enabled": False}))
    with pytest.raises(CheckpointError, match="cannot resume a resnet18"):
        train(other, tmp_path / "other", resume=result.last_checkpoint)


def test_unreachable_tracking_store_fails_before_training(tmp_path):
    from eed.errors import TrackingError

    config = synthetic_config(tmp_path, **{"tracking.uri": "http://127.0.0.1:9/"})
    with pytest.raises(TrackingError, match="not reachable"):
        train(config, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()
    config = synthetic_config(tmp_path, **{"tracking.uri": f"sqlite:///{tmp_path}/no/such/dir/db.sqlite"})
    with pytest.raises(TrackingError, match="does not exist"):
        train(config, tmp_path / "out")


DDP_RUNNER = textwrap.dedent("""
    import os, sys, torch
    import eed.engine.trainer as T
    from eed.config import load_config
    out, *overrides = sys.argv[1:]
    result = T.train(load_config(None, overrides), out, resume="never")
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
""")


def test_two_process_gloo_ddp_keeps_ranks_identical_and_logs_one_run(tmp_path):
    config = synthetic_config(tmp_path, **{"train.epochs": 1, "train.nproc": 2})
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_runner.py"
    script.write_text(DDP_RUNNER)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(out),
            *synthetic_overrides(tmp_path, **{"train.epochs": 1}),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert state_allclose(rank0, rank1, atol=0)
    client = MlflowClient(config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("eed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # Only rank 0 writes checkpoints.
    ddp = Checkpoint.load(out / "checkpoints" / "last.pt")
    assert ddp.epoch == 1
    # train.batch_size is the global batch: two processes take as many optimizer steps per
    # epoch as one (each with half the batch), at the same learning rate.
    single = train(
        load_config(None, synthetic_overrides(tmp_path, **{"train.epochs": 1, "tracking.enabled": False})),
        tmp_path / "single",
    )
    steps = Checkpoint.load(single.last_checkpoint).resume.scheduler["last_epoch"]
    assert steps == 320 // 64 and ddp.resume.scheduler["last_epoch"] == steps


@pytest.mark.slow
def test_real_cifar100_smoke_learns_beyond_chance(tmp_path, cifar100_prepared):
    """Reduced-width ResNet-18 (width 8), about a minute of one core on real CIFAR-100: main output
    test top-1 must clear 5% (chance is 1%), proving data, labels and training are wired (its margin:
    BENCHMARKS.md, *Test suite*)."""
    overrides = [
        f"data.prepared_dir={cifar100_prepared}",
        "data.backend=tensor",
        "data.train_subset=15000",
        "model.width=8",
        "train.epochs=3",
        "train.schedule=onecycle",
        "method=eed",
        "tracking.enabled=false",
        "train.device=cpu",
    ]
    result = train(load_config(None, overrides), tmp_path / "smoke")
    assert result.test_metrics["test/acc_main"] >= 0.05, result.test_metrics


def test_resume_compares_only_the_settings_that_shape_training(tmp_path):
    """An interrupted run resumes after evaluation, tracking, output or loader-thread settings
    change; another learning rate (any key that shapes training) is refused, naming the key,
    rather than starting over on top of the unfinished run; --resume never starts over."""
    from eed.engine.checkpoint import resume_checkpoint

    config = load_config(None, synthetic_overrides(tmp_path))
    network = NetworkSpec("resnet18", 10, 4, True)
    last = Checkpoint(network, {}, config.model_dump(), TrainState(epoch=1)).save(tmp_path / "last.pt")
    harmless = load_config(
        None,
        synthetic_overrides(
            tmp_path,
            **{
                "eval.thresholds": 11,
                "tracking.uri": f"sqlite:///{tmp_path / 'other.db'}",
                "data.num_workers": 2,
                "paths.out_dir": str(tmp_path / "elsewhere"),
                "train.checkpoint_every": 2,
            },
        ),
    )
    assert resume_checkpoint("auto", last, harmless).epoch == 1
    other_lr = load_config(None, synthetic_overrides(tmp_path, **{"train.lr": 0.01}))
    with pytest.raises(CheckpointError, match=r"other training settings \(train.lr: 0.05 -> 0.01\).*--resume never"):
        resume_checkpoint("auto", last, other_lr)
    assert resume_checkpoint("never", last, other_lr) is None
    # A finished run is never resumed: a run with any settings starts afresh.
    finished = Checkpoint(network, {}, config.model_dump(), TrainState(epoch=2, phase="done")).save(
        tmp_path / "done.pt"
    )
    assert resume_checkpoint("auto", finished, other_lr) is None and resume_checkpoint("auto", finished, config) is None
