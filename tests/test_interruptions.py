"""Interrupted runs lose nothing: a training killed (kill -9) or stopped (SIGTERM/SIGINT) in
any phase — the loader warm-up, an epoch, between an epoch's checkpoint and its metrics, the
final test, the model logging — continues into the same MLflow run when re-run, logs every
metric step exactly once and ends FINISHED; with the tensor backend and deterministic
kernels its weights equal an uninterrupted run's.

Each attempt runs in a child forked from this process (``os.fork``: the imports are paid
once), which plants a fault at one "event" (a checkpoint write, an evaluation, a logging
call, a training step) and dies or signals itself there.
"""

from __future__ import annotations

import os
import random
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import eed.engine.trainer as T
from eed import tracking
from eed.config import load_config
from eed.data import prepare
from eed.data.loaders import TensorEpochLoader
from eed.engine.checkpoint import Checkpoint
from eed.errors import TrainingInterrupted
from eed.objectives import ExitEnsembleObjective

EPOCHS = 3


def tiny_overrides(run_dir: Path, prepared: Path, store: str, experiment: str, **extra: object) -> list[str]:
    values = {
        "data.dataset": "synthetic",
        "data.backend": "tensor",
        "data.val_size": 32,
        "data.num_workers": 1,
        "data.prepared_dir": str(prepared),
        "data.synthetic.num_train": 160,
        "data.synthetic.num_test": 32,
        "data.synthetic.num_classes": 4,
        "data.train_subset": 0,
        "model.width": 4,
        "train.epochs": EPOCHS,
        "train.batch_size": 32,
        "train.lr": 0.05,
        "train.deterministic": True,
        "train.device": "cpu",
        "tracking.uri": store,
        "tracking.experiment": experiment,
        "paths.out_dir": str(run_dir / "out"),
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


# (object, attribute) of every function whose call is an event where a fault can strike.
EVENTS = [
    (TensorEpochLoader, "warmup"),
    (Checkpoint, "save"),
    (T, "validate"),
    (T, "train_one_epoch"),
    (T._Training, "final_test"),
    (ExitEnsembleObjective, "forward"),
    (tracking.MlflowLogger, "log_metrics"),
    (tracking.MlflowLogger, "log_artifact"),
    (tracking.MlflowLogger, "log_model"),
    (tracking.MlflowLogger, "set_tags"),
    (tracking.MlflowLogger, "finish"),
]


def plant(fault: Callable[[], None] | None, at: int | None = None, where: tuple[str, int] | None = None) -> list[str]:
    """Wrap every event: ``fault`` strikes at the ``at``-th event (before the call or after it,
    by the event's parity) or before the ``n``-th call of ``where = (name, n)``. Returns the
    growing list of event names."""
    seen: list[str] = []
    for owner, name in EVENTS:
        original = getattr(owner, name)

        def wrapped(*args, __original=original, __name=name, **kwargs):
            seen.append(__name)
            by_count = at is not None and len(seen) == at
            by_name = where is not None and where == (__name, seen.count(__name))
            if fault is not None and (by_name or (by_count and len(seen) % 2)):
                fault()
            result = __original(*args, **kwargs)
            if fault is not None and by_count and not len(seen) % 2:
                fault()
            return result

        setattr(owner, name, wrapped)
    return seen


def kill9() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def in_child(overrides: list[str], out: Path, fault=None, **when) -> int:
    """Train in a forked child with a planted fault; its exit status (-9 killed, 143, 130, 0)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            seen = plant(fault, **when)
            T.train(load_config(None, overrides), out, resume="auto")
            code = 0
            (out.parent / "events.txt").write_text("\n".join(seen))  # what an uninterrupted run goes through
        except TrainingInterrupted as stopped:
            code = stopped.exit_code
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def finished(out: Path) -> bool:
    """Whether the training is done: last.pt says so (a kill after that is after the end)."""
    last = out / "checkpoints" / "last.pt"
    return last.is_file() and Checkpoint.load(last).state.phase == "done"


def until_done(overrides: list[str], out: Path, attempts: int = 5) -> None:
    """Re-run, without a fault, until the training is done."""
    for _ in range(attempts):
        if finished(out) or in_child(overrides, out) == 0:
            return
    raise AssertionError(f"training did not finish in {attempts} re-runs")


def assert_one_complete_run(attempt: Attempt, weights: dict[str, torch.Tensor]) -> None:
    """One MLflow run, FINISHED; every metric's steps exactly once; checkpoints loadable and of
    that run; the final weights those of the uninterrupted run."""
    client = MlflowClient(attempt.store)
    runs = client.search_runs([client.get_experiment_by_name(attempt.experiment).experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
    run = runs[0]
    for name in run.data.metrics:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
        if name.startswith("system/"):  # MLflow's monitor: one step per wall-clock sample, as many as the run lasted
            assert len(set(steps)) == len(steps), f"{name}: a step logged twice, {steps}"
            continue
        expected = [EPOCHS] if name.startswith(("test/acc_", "test/max_acc")) else list(range(1, EPOCHS + 1))
        assert steps == expected, f"{name}: steps {steps}"
    checkpoints = attempt.out / "checkpoints"
    last, best = Checkpoint.load(checkpoints / "last.pt"), Checkpoint.load(checkpoints / "best.pt")
    assert last.state.phase == "done" and last.run_id == best.run_id == run.info.run_id
    assert not (checkpoints / "best.pt.pending").exists()
    assert last.weights.keys() == weights.keys()
    assert all(torch.equal(last.weights[k], weights[k]) for k in weights), "final weights differ"


@dataclass
class Straight:
    prepared: Path
    store: str  # one sqlite store for every attempt of the module, an experiment each
    weights: dict[str, torch.Tensor]
    events: int  # events of an uninterrupted run


@dataclass
class Attempt:
    overrides: list[str]
    out: Path  # the train stage's folder
    store: str
    experiment: str


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Straight:
    """The uninterrupted run (in a child, like every attempt): its weights and event count."""
    base = tmp_path_factory.mktemp("straight")
    prepared, store = base / "prepared", f"sqlite:///{base / 'mlflow.db'}"
    overrides = tiny_overrides(base, prepared, store, "straight")
    prepare(load_config(None, overrides))
    out = base / "out" / "train"
    assert in_child(overrides, out) == 0
    events = len((out.parent / "events.txt").read_text().split("\n"))
    return Straight(prepared, store, Checkpoint.load(out / "checkpoints" / "last.pt").weights, events)


def new_attempt(tmp_path: Path, name: str, straight: Straight, *extra: str) -> Attempt:
    run_dir = tmp_path / name
    run_dir.mkdir()
    experiment = f"{tmp_path.name}-{name}"
    overrides = tiny_overrides(run_dir, straight.prepared, straight.store, experiment) + list(extra)
    return Attempt(overrides, run_dir / "out" / "train", straight.store, experiment)


# --------------------------------------------------------------------------- one fault per phase


@pytest.mark.parametrize(
    ("where", "fault", "status"),
    [
        (("warmup", 1), sigterm, 143),  # SIGTERM during the loader warm-up
        (("final_test", 1), kill9, -9),  # kill -9 during the final test
        (("set_tags", 2), sigterm, 143),  # SIGTERM while the results are logged (1: the run's own tag)
        (("log_artifact", 1), sigint, 130),  # SIGINT while the artifacts are logged
        (("log_model", 1), kill9, -9),  # kill -9 while the model is logged
        (("train_one_epoch", EPOCHS), kill9, -9),  # kill -9 at the start of the last epoch
    ],
    ids=[
        "sigterm-warmup",
        "kill9-final-test",
        "sigterm-results",
        "sigint-artifacts",
        "kill9-model",
        "kill9-last-epoch",
    ],
)
def test_an_interrupt_in_any_phase_continues_the_same_run(tmp_path, straight, where, fault, status):
    attempt = new_attempt(tmp_path, "run", straight)
    assert in_child(attempt.overrides, attempt.out, fault, where=where) == status
    if status > 0:  # a signal: the run ended KILLED (not FAILED, not RUNNING)
        run_id = Checkpoint.load(attempt.out / "checkpoints" / "last.pt").run_id
        assert MlflowClient(attempt.store).get_run(run_id).info.status == "KILLED"
    until_done(attempt.overrides, attempt.out)
    assert_one_complete_run(attempt, straight.weights)


def test_an_epoch_between_checkpoints_is_logged_once(tmp_path, straight):
    """checkpoint_every 2, killed at the start of epoch 2: epoch 1 (evaluated, not checkpointed)
    is trained again by the re-run, and its metrics reach the store once, with its checkpoint."""
    attempt = new_attempt(tmp_path, "run", straight, "train.checkpoint_every=2")
    assert in_child(attempt.overrides, attempt.out, kill9, where=("train_one_epoch", 2)) == -9
    assert Checkpoint.load(attempt.out / "checkpoints" / "last.pt").epoch == 0  # the one before any epoch
    until_done(attempt.overrides, attempt.out)
    assert_one_complete_run(attempt, straight.weights)


# --------------------------------------------------------------------------- fault injection

TRIALS = 20


@pytest.mark.slow
def test_fault_injection_kill9_at_random_moments(tmp_path, straight):
    """TRIALS seeded trials: kill -9 at a random event of the run (any phase, any step), then
    re-runs, each killed again at a random event with probability 1/2, until one finishes."""
    for trial in range(TRIALS):
        rng = random.Random(trial)
        attempt = new_attempt(tmp_path, f"trial{trial}", straight)
        assert in_child(attempt.overrides, attempt.out, kill9, at=rng.randint(1, straight.events)) in (-9, 0)
        while rng.random() < 0.5 and not finished(attempt.out):
            in_child(attempt.overrides, attempt.out, kill9, at=rng.randint(1, straight.events))
        until_done(attempt.overrides, attempt.out)
        assert_one_complete_run(attempt, straight.weights)


# --------------------------------------------------------------------------- failing fast


def test_unusable_output_folders_and_a_full_disk_fail_before_the_first_step(tmp_path, straight, monkeypatch):
    """An output folder that cannot be written, or too little free space for the checkpoints,
    stops training before its first step with one line (OSError, exit 7 at the boundary)."""
    import shutil

    from eed.errors import exit_code, one_line

    steps: list[int] = []
    monkeypatch.setattr(T, "train_one_epoch", lambda *args, **kwargs: steps.append(1))
    attempt = new_attempt(tmp_path, "run", straight)
    config = load_config(None, attempt.overrides)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError) as unwritable:  # noqa: PT011 (the OS's own message)
        T.train(config, blocker / "train")
    assert exit_code(unwritable.value) == 7 and "a-file" in one_line(unwritable.value)

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(OSError, match="No space left for three checkpoints: 0 MiB free") as full:
        T.train(config, attempt.out)
    assert "\n" not in one_line(full.value) and exit_code(full.value) == 7
    assert steps == []


def test_a_failed_checkpoint_write_says_what_failed_not_torchs_internals(tmp_path, monkeypatch):
    import shutil

    from eed.engine.checkpoint import NetworkSpec, TrainState

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")

    monkeypatch.setattr(torch, "save", full_disk)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=0))
    with pytest.raises(OSError, match="Could not write the checkpoint .0 MiB free; is the disk full") as error:
        Checkpoint(NetworkSpec("resnet18", 10, 4, True), {}, {}, TrainState(epoch=1)).save(tmp_path / "last.pt")
    assert error.value.errno == 28 and "inline_container" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no half-written file left


def test_system_metrics_are_logged_once_per_step_across_a_resume(tmp_path, straight, monkeypatch):
    """MLflow's system-metrics monitor samples by wall clock (10 s by default), so a run long enough, or
    a machine slow enough, logs system/* metrics too: sampled here every 0.2 s, they appear whatever the
    machine's speed, and a resumed process continues their steps (each step once, none twice)."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # inherited by the forked children
    attempt = new_attempt(tmp_path, "system-metrics", straight)
    assert in_child(attempt.overrides, attempt.out, kill9, at=straight.events // 2) == -9
    until_done(attempt.overrides, attempt.out)
    assert_one_complete_run(attempt, straight.weights)
    client = MlflowClient(attempt.store)
    (run,) = client.search_runs([client.get_experiment_by_name(attempt.experiment).experiment_id])
    assert any(name.startswith("system/") for name in run.data.metrics), sorted(run.data.metrics)
