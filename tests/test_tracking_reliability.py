"""The tracking layer under stress: processes racing to open one new sqlite store, and a
real ``mlflow server`` as the remote store (train + evaluate through HTTP)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- racing processes

# One worker: imports first (slow, uneven), then for each trial waits at a file barrier and
# opens that trial's brand-new store, creating the same experiment and a run of its own; then
# at a second barrier creates that trial's new experiment (and a run) in a store that exists.
RACE_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    root, index, trials = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    from eed import tracking
    import mlflow.store.tracking.sqlalchemy_store, mlflow.store.db.utils  # warm: race the store, not imports

    def race(step, uri, experiment):
        (root / f"ready-{step}-{index}").touch()
        while not (root / f"go-{step}").exists():
            time.sleep(0.001)
        try:
            out = "ok " + tracking.MlflowLogger.start(uri, experiment, run_name=f"w{index}", tags={}).run_id
        except Exception as error:
            out = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        (root / f"result-{step}-{index}").write_text(out)

    for trial in range(trials):
        race(f"store{trial}", f"sqlite:///{root / f'store{trial}' / 'mlflow.db'}", "race")
        race(f"exp{trial}", f"sqlite:///{root / 'shared' / 'mlflow.db'}", f"race-{trial}")
""")


def _wait_for(paths: list[Path], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def test_processes_opening_a_new_sqlite_store_together_all_succeed(tmp_path):
    """Several processes released at once onto a store that does not exist yet, then onto an
    experiment that does not exist yet: every one gets the same experiment and its own run (no
    "table experiments already exists", no "duplicate column", no "Experiment ... already exists")."""
    from mlflow.tracking import MlflowClient

    workers, trials = 4, 3
    steps = [step for trial in range(trials) for step in (f"store{trial}", f"exp{trial}")]
    for folder in [f"store{trial}" for trial in range(trials)] + ["shared"]:
        (tmp_path / folder).mkdir()
    shared = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    MlflowClient(shared).search_experiments()  # the store of the experiment races exists
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_WORKER, str(tmp_path), str(i), str(trials)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(workers)
    ]
    try:
        for step in steps:
            _wait_for([tmp_path / f"ready-{step}-{i}" for i in range(workers)], 600, f"workers ready ({step})")
            (tmp_path / f"go-{step}").touch()
            _wait_for([tmp_path / f"result-{step}-{i}" for i in range(workers)], 600, f"results ({step})")
        for proc in procs:
            output = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0, output
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    failures = []
    for step in steps:
        results = [(tmp_path / f"result-{step}-{i}").read_text() for i in range(workers)]
        failures += [f"{step}: {r}" for r in results if not r.startswith("ok ")]
        if all(r.startswith("ok ") for r in results):
            trial = step[-1]
            uri = shared if step.startswith("exp") else f"sqlite:///{tmp_path / f'store{trial}' / 'mlflow.db'}"
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("race" if step.startswith("store") else f"race-{trial}")
            runs = client.search_runs([experiment.experiment_id])
            assert sorted(r.info.run_id for r in runs) == sorted(r.split()[1] for r in results)
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- a real tracking server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a sqlite database and an artifact folder in ``root``;
    :meth:`stop` and :meth:`start` again keep both (and the port)."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "server.log"

    def start(self, timeout: float = 600) -> None:
        # The job runner (a pool of huey consumer processes) is not needed for tracking.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with open(self.log, "a") as log:  # its own session: stop() ends the server and its workers
            self.proc = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"mlflow server did not answer on {self.uri}/health within {timeout:.0f} s:\n"
                    + self.log.read_text()[-3000:]
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # uvicorn's worker may outlive the parent for a moment: wait until the port is free.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left of its session
        self.proc = None


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory):
    """One server for this module's tests (it takes ~10 s to start on a small machine)."""
    server = MlflowServer(tmp_path_factory.mktemp("server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server(_module_server, monkeypatch):
    """The module's server, running (a test that stopped it and failed left it stopped)."""
    # What check_tracking_uri sets for an http store, set here so that it is undone after the test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if _module_server.proc is None:
        _module_server.start()
    return _module_server


def tiny_config(tmp_path: Path, tracking_uri: str, **extra: object):
    """A two-epoch width-4 ResNet-18 on a small synthetic dataset (as in tests/test_train.py)."""
    from eed.config import load_config
    from eed.data import prepare

    values = {
        "data.dataset": "synthetic",
        "data.backend": "tensor",
        "data.val_size": 32,
        "data.prepared_dir": str(tmp_path / "prepared"),
        "data.num_workers": 1,
        "data.synthetic.num_train": 128,
        "data.synthetic.num_test": 32,
        "data.synthetic.num_classes": 10,
        "data.train_subset": 0,
        "model.width": 4,
        "train.epochs": 2,
        "train.batch_size": 64,
        "train.lr": 0.05,
        "train.deterministic": True,
        "train.device": "cpu",
        "eval.thresholds": 11,
        "eval.budgets": "[0.0001, 1.0]",
        "tracking.uri": tracking_uri,
        "tracking.experiment": "remote",
        "paths.out_dir": str(tmp_path / "out"),
        **extra,
    }
    config = load_config(None, [f"{k}={v}" for k, v in values.items()])
    prepare(config)
    return config


def test_train_and_evaluate_through_a_real_tracking_server(tmp_path, mlflow_server):
    """tracking.uri = http://…: the training run ends FINISHED with its test metrics and its
    artifacts (uploaded through the server into its artifact folder, downloadable through it),
    and evaluate, given the run id, downloads best.pt and logs its child run there."""
    from mlflow.tracking import MlflowClient

    from eed.engine.checkpoint import Checkpoint
    from eed.engine.trainer import train
    from eed.stages.evaluate import evaluate
    from eed.stages.report import training_figures

    config = tiny_config(tmp_path, mlflow_server.uri)
    result = train(config, tmp_path / "out" / "train")
    training_figures(config, tmp_path / "out" / "train")  # the report stage's figures, into the same run
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert {"test/acc_main", "test/acc_exit1", "test/max_acc_main"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(result.run_id, "val/acc_main")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"checkpoints", "figures", "config.yaml"} <= artifacts
    figures = [a.path for a in client.list_artifacts(result.run_id, "figures")]
    assert figures and {Path(p).suffix for p in figures} == {".png", ".svg"}
    # Proxied: the files are in the server's artifact folder, and come back through HTTP.
    assert list((mlflow_server.root / "artifacts").rglob("best.pt"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    best = Path(client.download_artifacts(result.run_id, "checkpoints/best.pt", str(downloads)))
    assert Checkpoint.load(best).run_id == result.run_id
    assert "remote" in Path(client.download_artifacts(result.run_id, "config.yaml", str(downloads))).read_text()
    png = next(p for p in figures if p.endswith(".png"))
    assert Path(client.download_artifacts(result.run_id, png, str(downloads))).read_bytes()[:4] == b"\x89PNG"

    evaluated = evaluate(config, result.run_id, out=tmp_path / "out" / "evaluate", log=True)
    child = client.get_run(evaluated.run_id)
    assert child.info.status == "FINISHED" and child.info.run_name == "evaluate test best.pt"
    assert child.data.tags["mlflow.parentRunId"] == result.run_id
    # The child logs what it adds: a value its training run holds already (same name, same value) is left out.
    parent_metrics = client.get_run(result.run_id).data.metrics
    assert {"test/top5_main", "test/ece_main"} <= set(child.data.metrics)
    assert child.data.metrics.get("test/acc_main", parent_metrics["test/acc_main"]) == pytest.approx(
        evaluated.report.metrics()["test"]["acc_main"]
    )
    assert "metrics.json" in {a.path for a in client.list_artifacts(evaluated.run_id)}


# The server stops once epoch 1 is logged: with 3 epochs mid-run (last.pt of epoch 2 is
# resumed into epoch 3), with 2 at the last epoch (the re-run resumes in the final phase and
# must still log epoch 2's metrics, which last.pt holds and the store lacks).
@pytest.mark.parametrize("epochs", [3, 2], ids=["mid-run", "at-the-last-epoch"])
def test_a_server_stopped_mid_training_fails_in_one_line_and_the_rerun_continues_the_run(
    tmp_path, mlflow_server, monkeypatch, capsys, epochs
):
    """The server goes away once epoch 1 is logged, so epoch 2 cannot be: training stops with
    ONE line naming the URI (exit 5, no traceback), last.pt stays loadable and names the run;
    once the server is back (same database, artifacts and port) the re-run continues that same
    MLflow run to FINISHED with every epoch's metrics."""
    from mlflow.tracking import MlflowClient

    from eed import tracking
    from eed.engine.checkpoint import Checkpoint
    from eed.engine.trainer import train
    from eed.errors import error_boundary

    config = tiny_config(tmp_path, mlflow_server.uri, **{"train.epochs": epochs})
    out = tmp_path / "out" / "train"
    log_metrics = tracking.MlflowLogger.log_metrics

    def then_stop_the_server(self, metrics, step):
        log_metrics(self, metrics, step)
        if step == 1:
            mlflow_server.stop()

    monkeypatch.setattr(tracking.MlflowLogger, "log_metrics", then_stop_the_server)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped, error_boundary():
        train(config, out)
    stderr = capsys.readouterr().err
    assert stopped.value.code == 5, stderr
    last = Checkpoint.load(out / "checkpoints" / "last.pt")
    run_id = last.run_id
    assert last.epoch >= 1 and run_id
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    expected = (
        f"error: MLflow tracking store {mlflow_server.uri} is not reachable (Connection refused) "
        f"while logging metrics of step 2 (run {run_id})"
    )
    assert errors == [expected] and "Traceback" not in stderr, stderr

    monkeypatch.setattr(tracking.MlflowLogger, "log_metrics", log_metrics)
    mlflow_server.start()
    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # it could not be told FAILED
    result = train(config, out)
    assert result.run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "test/acc_main" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run_id, "val/acc_main")] == list(range(1, epochs + 1))


def test_an_unreachable_server_is_one_tracking_error_and_a_failed_run_end_is_best_effort(monkeypatch):
    from eed import tracking
    from eed.errors import TrackingError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(TrackingError, match=r"is not reachable: Connection refused$"):
        tracking.check_tracking_uri(uri)
    logger = tracking.MlflowLogger(uri, "0" * 32)
    with pytest.raises(TrackingError) as lost:
        logger.log_metrics({"train": {"loss": 1.0}}, step=3)
    assert str(lost.value) == (
        f"MLflow tracking store {uri} is not reachable (Connection refused) while logging "
        f"metrics of step 3 (run {'0' * 32})"
    )
    logger.finish("FAILED")  # on the way out of another error: that error is the news
    logger.finish("KILLED")
    with pytest.raises(TrackingError, match="while ending the run FINISHED"):
        logger.finish("FINISHED")
    # Not "neither a checkpoint file nor a run": the store is down, the run may well be there.
    with pytest.raises(TrackingError, match="while reading run"), tracking.downloaded_checkpoint(uri, "0" * 32):
        pass
    with pytest.raises(TrackingError, match="while searching its runs"):
        tracking.find_runs(uri, run_ids=["0" * 32])


def test_an_experiment_created_meanwhile_by_another_process_is_used(tmp_path, monkeypatch):
    """The look-up finds nothing, another process creates the experiment, our create fails as
    "already exists": we take theirs."""
    from mlflow.tracking import MlflowClient

    from eed import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    theirs = MlflowClient(uri).create_experiment("late")
    look_up = MlflowClient.get_experiment_by_name
    calls = []

    def stale_once(self, name):
        calls.append(name)
        return None if len(calls) == 1 else look_up(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_once)
    assert tracking.ensure_experiment("late", uri) == theirs and len(calls) == 2
    assert (tmp_path / "mlflow.db.lock").is_file()


def test_dataset_inputs_logged_while_another_run_inserts_the_same_dataset(tmp_path):
    """Seen in a Slurm grid: two cells starting at once both find no row for the same dataset and
    insert it; the later insert breaks the store's unique key (sqlite3.IntegrityError, the whole call
    rolled back). The row is there then, so logging again links it: the run gets its inputs once."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from eed.tracking.logger import DatasetRecord, log_dataset_inputs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("race", (tmp_path / "artifacts").as_uri())
    record = DatasetRecord(
        "synthetic-train",
        "dad630db174813263d74f8c9f760a000",
        "file:///data/train.beton",
        "training",
        {"num_samples": 256},
    )
    first, second = (client.create_run(experiment).info.run_id for _ in range(2))

    class LosesTheRaceOnce:
        """The real client, whose first log_inputs meets the other run's insert."""

        def __init__(self):
            self.calls = 0

        def __getattr__(self, name):
            return getattr(client, name)

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls == 1:
                log_dataset_inputs(client, first, [record])  # the other cell, in between
                raise MlflowException(
                    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                    "datasets.name, datasets.digest"
                )
            return client.log_inputs(run_id, datasets=datasets)

    racing = LosesTheRaceOnce()
    log_dataset_inputs(racing, second, [record])
    assert racing.calls == 2
    for run_id in (first, second):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [(record.name, record.digest)]

    class StoreDown(LosesTheRaceOnce):
        def log_inputs(self, run_id, datasets):
            raise MlflowException("database is locked")

    third = client.create_run(experiment).info.run_id
    with pytest.raises(MlflowException, match="database is locked"):  # any other failure is not retried
        log_dataset_inputs(StoreDown(), third, [record])
