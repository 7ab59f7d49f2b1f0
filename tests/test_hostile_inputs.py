"""What a hostile tester still broke after the first reliability round (issue 24): each input is
refused in one line, with its exit code, and leaves nothing behind."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eed.config import ConfigError, load_config
from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState

ROOT = Path(__file__).resolve().parents[1]


def eed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `eed` command as a user runs it, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "eed.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def assert_one_line(completed: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == code, completed.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- params.yaml


@pytest.mark.parametrize("seed", [2**32, -1, 2**40])
def test_a_seed_out_of_the_generators_range_is_refused_by_the_config(seed):
    with pytest.raises(ConfigError, match=r"seed: .*(less than or equal to 4294967295|greater than or equal to 0)"):
        load_config(None, [f"seed={seed}"])
    assert load_config(None, [f"seed={2**32 - 1}"]).seed == 2**32 - 1


def test_the_largest_seed_seeds_every_rank():
    from eed.engine.runtime import seed_everything

    seed_everything(2**32 - 1 + 3, deterministic=False)  # seed + rank past the generators' range wraps


def test_a_params_file_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes((ROOT / "params.yaml").read_bytes().replace(b"# ", b"# caf\xe9 ", 1))
    offset = params.read_bytes().index(b"\xe9")
    with pytest.raises(ConfigError) as error:
        load_config(params)
    message = str(error.value)
    assert str(params) in message and f"byte 0xe9 at offset {offset}" in message and "UTF-8" in message
    assert "\n" not in message
    completed = eed("resolve", "--params", str(params), cwd=tmp_path)
    assert_one_line(completed, 2, f"offset {offset}")


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\ntrain:\n  epochs: 3\n  lr: 0.05\nmethod: eed\ntrain:\n  batch_size: 64\n")
    with pytest.raises(ConfigError, match=r"params.yaml: duplicate key 'train' at line 6 \(first at line 2\)"):
        load_config(params)
    params.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'train.epochs' at line 3 \(first at line 2\)"):
        load_config(params)


# --------------------------------------------------------------------------- the disk


def test_a_disk_that_fills_while_a_checkpoint_is_written_names_the_path_and_the_free_space(tmp_path, monkeypatch):
    """torch.save reports a full disk as an OSError too (not only as its RuntimeError)."""

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=3 * 2**20))
    path = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(OSError) as error:  # noqa: PT011 (the OS's own message)
        Checkpoint(NetworkSpec("resnet18", 10, 4, True), {}, {}, TrainState()).save(path)
    from eed.errors import one_line

    line = one_line(error.value)
    assert error.value.errno == errno.ENOSPC and str(path) in line and "3 MiB free" in line, line
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no half-written file left


# --------------------------------------------------------------------------- output folders


TINY = [
    "data.dataset=synthetic",
    "data.backend=tensor",
    "data.val_size=32",
    "data.train_subset=0",
    "data.synthetic.num_train=96",
    "data.synthetic.num_test=32",
    "model.width=4",
    "train.epochs=1",
    "train.batch_size=32",
    "train.device=cpu",
    "tracking.enabled=false",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder (params.yaml) with tiny synthetic data prepared."""
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    completed = eed("prepare", *[f"--set={o}" for o in TINY], cwd=folder)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return folder


def test_a_second_training_into_the_same_folder_is_refused_naming_the_holder(project):
    """Two `eed train --out X` at once would log into one MLflow run and write each other's
    checkpoints: the folder is locked for the life of a training."""
    from eed.paths import training_lock

    out = project / "locked"
    with training_lock(out):
        completed = eed("train", "--out", str(out), *[f"--set={o}" for o in TINY], cwd=project)
        assert_one_line(completed, 2, str(out), f"pid {__import__('os').getpid()}", "another --out")
        assert not (out / "checkpoints").exists()
    done = eed("train", "--out", str(out), *[f"--set={o}" for o in TINY], cwd=project)  # free again
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "checkpoints" / "last.pt").is_file()


def test_the_lock_is_exclusive_between_processes(tmp_path):
    from eed.paths import training_lock

    code = (
        "import sys; from eed.paths import training_lock\n"
        "try:\n    training_lock(sys.argv[1]).__enter__()\nexcept Exception as error:\n    print(error)\n"
    )
    with training_lock(tmp_path / "out"):
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True)
    assert "in use by another training" in held.stdout, held
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True)
    assert free.stdout == "", free


@pytest.mark.parametrize(
    ("command", "overrides", "code"),
    [
        ("train", ["data.prepared_dir=/nonexistent/prepared"], 3),  # data error, after the folder checks
        ("train", ["tracking.enabled=true", "tracking.uri=http://127.0.0.1:9/"], 5),  # store unreachable
        ("evaluate", ["data.prepared_dir=/nonexistent/prepared"], 4),  # no checkpoint there
        ("rdm", ["data.prepared_dir=/nonexistent/prepared"], 4),
    ],
)
def test_a_failed_command_leaves_no_new_folder(project, command, overrides, code):
    out = project / "new-output" / command
    args = [command, "--out", str(out), *[f"--set={o}" for o in [*TINY, *overrides]]]
    if command != "train":
        args.insert(1, str(project / "missing.pt"))
    completed = eed(*args, cwd=project)
    assert completed.returncode == code, completed.stderr[-2000:]
    assert not (project / "new-output").exists(), sorted(p.name for p in (project / "new-output").rglob("*"))


# --------------------------------------------------------------------------- prepared data


def lying_copy(project: Path, tmp_path: Path, edit) -> Path:
    """A copy of the project's prepared data whose manifest ``edit`` changes."""
    import json

    prepared = tmp_path / "prepared"
    shutil.copytree(project / "data" / "prepared", prepared)
    path = prepared / "synthetic" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return prepared


def cut_names(manifest: dict) -> None:
    manifest["class_names"] = manifest["class_names"][:5]


def cut_names_and_counts(manifest: dict) -> None:  # consistent in itself, but the labels go up to 9
    manifest["class_names"] = manifest["class_names"][:5]
    for record in manifest["splits"].values():
        record["class_counts"] = record["class_counts"][:5]
        record["num_samples"] = sum(record["class_counts"])


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (cut_names, "5 class names but"),
        (cut_names_and_counts, "labels up to 9"),
    ],
)
@pytest.mark.parametrize("backend", ["tensor", "ffcv"])
def test_a_manifest_that_lies_about_the_classes_is_refused_before_training(project, tmp_path, edit, fragment, backend):
    prepared = lying_copy(project, tmp_path, edit)
    out = tmp_path / "train"
    completed = eed(
        "train",
        "--out",
        str(out),
        *[f"--set={o}" for o in TINY],
        f"--set=data.prepared_dir={prepared}",
        f"--set=data.backend={backend}",
        cwd=project,
    )
    assert_one_line(completed, 3, fragment, "manifest.json")
    assert not out.exists()


# --------------------------------------------------------------------------- the store


def interrupted_training(tmp_path: Path, store: str):
    """A tiny training stopped by SIGTERM in its second epoch (the first is in last.pt and the store)."""
    from eed.data import prepare
    from eed.engine.trainer import train
    from eed.errors import TrainingInterrupted
    from eed.objectives import ExitEnsembleObjective

    overrides = [
        *TINY,
        "train.epochs=2",
        "tracking.enabled=true",
        f"tracking.uri={store}",
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "train.deterministic=true",
    ]
    config = load_config(None, overrides)
    prepare(config)
    forward, steps = ExitEnsembleObjective.forward, []

    def stop_in_epoch_2(self, output, target):
        steps.append(1)
        if len(steps) == 3:  # 2 steps per epoch
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, output, target)

    ExitEnsembleObjective.forward = stop_in_epoch_2
    try:
        with pytest.raises(TrainingInterrupted):
            train(config, tmp_path / "train")
    finally:
        ExitEnsembleObjective.forward = forward
    return overrides, Checkpoint.load(tmp_path / "train" / "checkpoints" / "last.pt").run_id


@pytest.mark.parametrize("gone", ["deleted", "tracking.uri changed"])
def test_resume_when_the_checkpoints_run_is_gone_continues_into_a_new_run_with_the_whole_history(
    tmp_path, gone, capsys
):
    from mlflow.tracking import MlflowClient

    from eed.engine.trainer import train

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides, old_run = interrupted_training(tmp_path, store)
    if gone == "deleted":
        MlflowClient(store).delete_run(old_run)
        # Evaluating a checkpoint of the deleted run logs a run of its own (it cannot nest under the run).
        from eed.stages.evaluate import evaluate

        evaluated = evaluate(
            load_config(None, overrides),
            str(tmp_path / "train" / "checkpoints" / "best.pt"),
            out=tmp_path / "evaluate",
            log=True,
        )
        assert "mlflow.parentRunId" not in MlflowClient(store).get_run(evaluated.run_id).data.tags
    else:
        store = f"sqlite:///{tmp_path / 'other.db'}"
        overrides.append(f"tracking.uri={store}")
    result = train(load_config(None, overrides), tmp_path / "train")
    assert result.run_id and result.run_id != old_run
    assert f"run {old_run}" in capsys.readouterr().err
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    for name in ("val/acc_main", "train/loss", "test/epoch_acc_main"):
        assert [m.step for m in client.get_metric_history(result.run_id, name)] == [1, 2], name
    assert run.data.params["method"] == "eed" and "test/acc_main" in run.data.metrics
    assert Checkpoint.load(tmp_path / "train" / "checkpoints" / "last.pt").run_id == result.run_id


def as_another_user(command: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """``command`` as user nobody when this process is root (root writes through permission bits)."""
    import os

    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "MPLCONFIGDIR": str(home / "mpl"),
        "NUMBA_CACHE_DIR": str(home / "numba"),
        "LANG": "C.UTF-8",
    }
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_read_only_tracking_store_is_refused_before_any_work(project, command):
    """A store this user cannot write (a colleague's, a read-only share): one line, exit 5, at the
    start (not a 600-line sqlite traceback after an epoch, nor after the whole evaluation pass)."""
    import os
    import tempfile

    from eed.tracking import check_tracking_uri

    base = Path(tempfile.mkdtemp(prefix="eed-read-only-"))
    try:
        base.chmod(0o777)
        store = base / "store"
        store.mkdir()
        check_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")  # creates the database, as its owner
        (store / "mlflow.db").chmod(0o444)
        store.chmod(0o555)
        work = base / "work"
        work.mkdir(mode=0o777)
        work.chmod(0o777)
        shutil.copytree(project / "data", work / "data")
        shutil.copy(project / "params.yaml", work / "params.yaml")
        for path in work.rglob("*"):
            path.chmod(0o777 if path.is_dir() else 0o666)
        args = [
            *[f"--set={o}" for o in TINY],
            "--set=tracking.enabled=true",
            f"--set=tracking.uri=sqlite:///{store / 'mlflow.db'}",
        ]
        if command == "evaluate":
            trained = eed("train", "--out", str(work / "trained"), *[f"--set={o}" for o in TINY], cwd=work)
            assert trained.returncode == 0, trained.stderr[-2000:]
            args = [str(work / "trained" / "checkpoints" / "best.pt"), *args]
            for path in (work / "trained").rglob("*"):
                path.chmod(0o777 if path.is_dir() else 0o666)
        completed = as_another_user(
            [sys.executable, "-m", "eed.cli", command, *args, "--out", str(work / "out")], cwd=work, home=work
        )
        assert_one_line(completed, 5, str(store / "mlflow.db"), "read-only")
        assert not (work / "out").exists()
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o777)
        shutil.rmtree(base, ignore_errors=True)
