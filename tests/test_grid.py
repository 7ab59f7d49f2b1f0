"""`eed grid`: the sweep syntax, a real grid of tiny synthetic cells on the local executor with two
"GPUs" (CUDA_VISIBLE_DEVICES checked through the tags of the runs) and its own MLflow server, a second run that starts
nothing, a cell killed mid-training that resumes into the same MLflow run, and the same through a
real one-node Slurm cluster (tests/slurm_cluster.py), with a task cancelled by scancel."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from eed.errors import ConfigError
from eed.stages.grid_plan import expand_sweeps
from tests.slurm_cluster import SlurmCluster

PARAMS = {
    "data": {
        "dataset": "synthetic",
        "backend": "tensor",
        "val_size": 64,
        "train_subset": 0,
        "prepared_dir": "prepared",
        "synthetic": {"num_train": 320, "num_test": 96, "num_classes": 10, "image_size": 32},
    },
    "model": {"width": 4},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
    "eval": {"thresholds": 11, "budgets": [0.001], "rdm_samples": 60},
    "tracking": {"uri": "sqlite:///mlflow.db"},
}


def test_sweeps_expand_as_dvc_does_into_their_product():
    assert expand_sweeps(["method=eed,branchynet", "seed=0,1"]) == [
        ["method=eed", "seed=0"],
        ["method=eed", "seed=1"],
        ["method=branchynet", "seed=0"],
        ["method=branchynet", "seed=1"],
    ]
    assert expand_sweeps(["loss.teacher=[1,main],[2,3]"]) == [["loss.teacher=[1,main]"], ["loss.teacher=[2,3]"]]
    assert expand_sweeps([]) == [[]]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        expand_sweeps(["method"])


def test_a_slurm_task_runs_its_commands_without_importing_torch(tmp_path):
    """The task as submitit ships it (pickled, run by a fresh Python on the node): it imports neither
    torch nor MLflow, runs its commands in order with the grid's store, and returns the first failure."""
    import pickle

    from eed.stages.grid_task import CellTask

    log = tmp_path / "grid.log"
    write = "import os, sys; print(sys.argv[1], os.environ['MLFLOW_TRACKING_URI']); sys.exit(int(sys.argv[2]))"
    commands = [
        [sys.executable, "-c", write, name, code] for name, code in (("first", "0"), ("second", "3"), ("third", "0"))
    ]
    (tmp_path / "task.pkl").write_bytes(pickle.dumps(CellTask(commands, log, "http://127.0.0.1:1")))
    node = (
        "import pickle, sys; task = pickle.load(open(sys.argv[1], 'rb')); code = task(); "
        "print(code, sorted({'torch', 'mlflow'} & set(sys.modules)))"
    )
    said = subprocess.run(
        [sys.executable, "-c", node, str(tmp_path / "task.pkl")], capture_output=True, text=True, check=True
    )
    assert said.stdout.split("\n")[0] == "3 []", said.stdout + said.stderr
    assert log.read_text().split() == ["first", "http://127.0.0.1:1", "second", "http://127.0.0.1:1"]


def new_project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("grid")
    (project / ".dvc").mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    eed(project, "prepare")
    return project


def test_a_cell_trained_elsewhere_is_evaluated_by_its_run_id(tmp_path):
    from eed.config import load_config
    from eed.stages.grid_plan import EVALUATE, TRAIN, Cell, cell_commands

    cell = Cell(
        ["seed=0"],
        "abc",
        load_config(None, []),
        tmp_path / "abc",
        run_id="0123456789abcdef0123456789abcdef",
        needs=EVALUATE,
    )
    (evaluate,) = cell_commands(cell, None, [], "sqlite:///x.db")
    assert evaluate[3:5] == ["evaluate", cell.run_id]  # its FINISHED run, not this folder's (absent) best.pt
    cell.needs, cell.run_id = TRAIN, None
    train, evaluate = cell_commands(cell, None, [], "sqlite:///x.db")
    assert train[3] == "train" and evaluate[4] == str(tmp_path / "abc" / "train" / "checkpoints" / "best.pt")
    assert f"paths.out_dir={tmp_path / 'abc'}" in train and "tracking.uri=sqlite:///x.db" in train


def test_a_cell_whose_width_the_preset_fills_is_found_by_the_params_its_run_logged(tmp_path):
    """params.yaml leaves model.width null (the preset's) and the trainer logs the width it built:
    the cell's hash must be the logged run's, or a second call trains a done cell again."""
    from mlflow.entities import Param

    from eed.config import flatten, load_config
    from eed.models.from_config import resolve_architecture
    from eed.stages.grid_plan import DONE, EVALUATE, plan

    config = load_config(None, ["seed=0"])
    assert config.model.width is None  # the preset fills it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("eed", artifact_location=(tmp_path / "artifacts").as_uri()))
    logged = flatten(resolve_architecture(config))
    client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in logged.items()])
    client.set_terminated(run.info.run_id)
    (cell,) = plan(None, [], ["seed=0"], tmp_path / "grid", uri)
    assert cell.run_id == run.info.run_id and cell.needs == EVALUATE
    # Evaluated elsewhere (its evaluate run is in the store, not in this folder): done, not evaluated again.
    child = client.create_run(
        run.info.experiment_id, tags={"mlflow.parentRunId": run.info.run_id, "eed.stage": "evaluate"}
    )
    client.set_terminated(child.info.run_id)
    (cell,) = plan(None, [], ["seed=0"], tmp_path / "grid", uri)
    assert cell.needs == DONE


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return new_project(tmp_path_factory)


def eed(project: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "eed.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**(env or os.environ), "OMP_NUM_THREADS": "1"},
    )
    if check:
        assert completed.returncode == 0, failure_report(project, completed)
    return completed


def failure_report(project: Path, completed: subprocess.CompletedProcess) -> str:
    """What a failed grid said (its cell lines come first, the compare table last) and the end of
    every cell's log, where a failed cell's reason is."""
    lines = completed.stdout.splitlines()
    states = [line for line in lines if line.startswith(("grid:", "  "))][:40]
    logs = [
        f"--- {log.parent.name}/grid.log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        for log in sorted((project / "outputs" / "grid").glob("*/grid.log"))
    ]
    return "\n".join([*states, "...", completed.stdout[-2000:], completed.stderr[-3000:], *logs])


def training_runs(project: Path, store: Path | None = None) -> list:
    client = MlflowClient(f"sqlite:///{store or project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


@pytest.mark.slow
def test_a_grid_on_two_gpus_with_its_own_server_runs_each_cell_once_and_a_second_call_starts_nothing(project):
    grid = ["grid", "-S", "method=eed,branchynet", "-S", "seed=0,1", "--gpus", "0,1", "--per-gpu", "2", "--server"]
    first = eed(project, *grid)
    assert "grid: 4 cells, 0 done" in first.stdout and "Test accuracy of best.pt" in first.stdout, first.stdout
    (server_uri,) = re.findall(r"its own MLflow server at (http://127\.0\.0\.1:\d+)", first.stdout)
    assert f"0 done in {server_uri}" in first.stdout
    with pytest.raises(OSError):  # noqa: PT011 (the OS's own message: the server stopped at the end)
        urllib.request.urlopen(f"{server_uri}/health", timeout=5)
    store = project / "outputs" / "grid" / "tracking"  # ... its runs stay in its store
    runs = training_runs(project, store / "mlflow.db")
    assert sorted((r.data.params["method"], r.data.params["seed"]) for r in runs) == [
        ("branchynet", "0"),
        ("branchynet", "1"),
        ("eed", "0"),
        ("eed", "1"),
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)  # logged through the server
    # Each cell was pinned to one of the two GPUs, two cells per GPU at most at once.
    assert {r.data.tags["eed.grid.cuda_visible_devices"] for r in runs} <= {"0", "1"}
    for run in runs:
        folder = project / "outputs" / "grid" / run.data.tags["eed.grid.cell"]
        assert (folder / "evaluate" / "metrics.json").is_file() and (
            folder / "train" / "checkpoints" / "best.pt"
        ).is_file()

    assert_the_live_table_reads_each_cells_epoch_and_accuracy(project, runs, f"sqlite:///{store / 'mlflow.db'}")

    second = eed(project, *grid)
    assert "grid: 4 cells, 4 done" in second.stdout and "running" not in second.stdout, second.stdout
    assert len(training_runs(project, store / "mlflow.db")) == 4


@pytest.mark.slow
def test_a_cell_killed_mid_training_resumes_into_the_same_run(project):
    args = ["grid", "-S", "method=distill", "--set", "train.epochs=10"]
    earlier = set((project / "outputs" / "grid").glob("*/train/checkpoints/last.pt"))  # (other tests' cells)
    process = subprocess.Popen(
        [sys.executable, "-m", "eed.cli", *args],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    while not set((project / "outputs" / "grid").glob("*/train/checkpoints/last.pt")) - earlier:
        assert process.poll() is None and time.monotonic() < deadline, "the cell never wrote last.pt"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the grid and its cell's training, mid-run (after its first epoch)
    process.wait()
    (killed,) = [r for r in training_runs(project) if r.data.params["method"] == "distill"]
    assert killed.info.status == "RUNNING"  # (kill -9: nothing could end it)

    again = eed(project, *args)
    assert "0 done" in again.stdout and "done" in again.stdout, again.stdout
    (resumed,) = [r for r in training_runs(project) if r.data.params["method"] == "distill"]
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    history = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_metric_history(resumed.info.run_id, "val/acc_main")
    assert [m.step for m in history] == list(range(1, 11))  # each epoch logged once


def assert_the_live_table_reads_each_cells_epoch_and_accuracy(project: Path, runs: list, store_uri: str) -> None:
    """On a terminal the cells are a table (no lines), each with its epoch and main accuracy from its last.pt."""
    from rich.console import Console

    from eed.stages.grid_plan import plan
    from eed.stages.grid_progress import GridProgress

    cells = plan(
        project / "params.yaml", [], ["method=eed,branchynet", "seed=0,1"], project / "outputs" / "grid", store_uri
    )
    console = Console(force_terminal=True, record=True, width=120, color_system=None)
    progress = GridProgress(cells, console)
    assert set(progress.state.values()) == {"skipped"}  # all four are done in the store
    for cell in cells:
        progress.say(cell, "running on GPU 1")
        progress.say(cell, "done")
    assert console.export_text() == ""  # a terminal shows the table, not lines
    console.print(progress.table())
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in console.export_text().splitlines()
        if line.startswith("│")
    }
    client = MlflowClient(store_uri)
    for run in runs:
        _, state, gpu, epoch, main = rows[run.data.tags["eed.grid.cell"]]
        last = client.get_metric_history(run.info.run_id, "val/acc_main")[-1]
        assert (state, gpu, epoch, main) == ("done", "1", "2", f"{100 * last.value:.2f}"), rows


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_a_grid_through_slurm_runs_each_cell_once_and_a_cancelled_task_resumes(slurm, tmp_path_factory):
    project = new_project(tmp_path_factory)
    # Two cells: a job array of two tasks (the local test above covers the product of sweeps).
    grid = ["grid", "--executor", "slurm", "-S", "method=eed,branchynet", "--server"]
    store = project / "outputs" / "grid" / "tracking" / "mlflow.db"  # (the grid's own server's)
    first = eed(project, *grid, env=slurm.env)
    assert "grid: 2 cells, 0 done" in first.stdout and "Slurm job" in first.stdout, first.stdout
    assert first.stderr == "", first.stderr  # (no sacct warnings: this cluster keeps no accounting)
    runs = training_runs(project, store)
    assert sorted(r.data.params["method"] for r in runs) == ["branchynet", "eed"]
    assert all(r.info.status == "FINISHED" and r.data.tags["eed.grid.slurm_job"] for r in runs)
    assert len({r.data.tags["eed.grid.slurm_job"] for r in runs}) == 2  # one array task each
    submitted = sorted((project / "outputs" / "grid" / "slurm").iterdir())

    second = eed(project, *grid, env=slurm.env)
    assert "grid: 2 cells, 2 done" in second.stdout and "Slurm job" not in second.stdout, second.stdout
    assert sorted((project / "outputs" / "grid" / "slurm").iterdir()) == submitted  # nothing submitted
    assert len(training_runs(project, store)) == 2

    # scancel a task mid-training: the grid says the cell failed; run again, it resumes into the same run.
    long = ["grid", "--executor", "slurm", "-S", "method=distill", "--set", "train.epochs=10", "--server"]
    earlier = set((project / "outputs" / "grid").glob("*/train/checkpoints/last.pt"))
    process = subprocess.Popen(
        [sys.executable, "-m", "eed.cli", *long],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**slurm.env, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 900
    while not set((project / "outputs" / "grid").glob("*/train/checkpoints/last.pt")) - earlier:
        assert process.poll() is None and time.monotonic() < deadline, "the cell never wrote last.pt"
        time.sleep(0.2)
    queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], env=slurm.env, capture_output=True, text=True)
    (job_id,) = queued.stdout.split()
    subprocess.run(["scancel", job_id], env=slurm.env, check=True)
    said, _ = process.communicate(timeout=600)
    # (scancel sends SIGTERM: the training checkpoints and stops with 143, which the task returns)
    assert process.returncode == 1 and "method=distill: failed (exit 143" in said, said
    (cancelled,) = [r for r in training_runs(project, store) if r.data.params["method"] == "distill"]
    assert cancelled.info.status != "FINISHED"

    again = eed(project, *long, env=slurm.env)
    assert "1 cells, 0 done" in again.stdout and ": done" in again.stdout, again.stdout
    (resumed,) = [r for r in training_runs(project, store) if r.data.params["method"] == "distill"]
    assert resumed.info.run_id == cancelled.info.run_id and resumed.info.status == "FINISHED"
    history = MlflowClient(f"sqlite:///{store}").get_metric_history(resumed.info.run_id, "val/acc_main")
    assert [m.step for m in history] == list(range(1, 11))  # each epoch logged once
