"""The DVC pipeline end to end on a tiny synthetic configuration, in a fresh git+DVC repo:
`dvc repro`, a no-op second repro, `dvc exp run -S method=…` in the workspace (with
`train.nproc: 2`) and through the queue and with --temp (both run in a copy under .dvc/tmp/exps/), `dvc exp show`, the MLflow runs,
and a misspelled `-S` key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data.dataset": "synthetic", "data.backend": "tensor", "data.val_size": 64, "data.train_subset": 0,
    "data.synthetic.num_train": 320, "data.synthetic.num_test": 128, "model.width": 4,
    "train.epochs": 1, "train.batch_size": 64, "train.device": "cpu", "eval.rdm_samples": 60,
    "eval.rdm_classes": 3, "eval.budgets": [0.001], "eval.thresholds": 11,
}


def set_key(params: dict, dotted: str, value: object) -> None:
    *path, key = dotted.split(".")
    node = params
    for part in path:
        node = node[part]
    assert key in node, dotted
    node[key] = value


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A new repository holding the project's pipeline with tiny params."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("eed", "pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in TINY.items():
        set_key(params, dotted, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "ci@example.org"], repo)
    run(["git", "config", "user.name", "ci"], repo)
    run(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's own DVC settings
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def env() -> dict[str, str]:
    environment = dict(os.environ)
    # Stages run the `python` first on PATH: the one running these tests.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("EED_DATA_ROOT", None)
    return environment


def run(command: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({completed.returncode}):\n"
                             f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}")
    return completed


def runs(repo: Path) -> list:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("eed")
    return [r for r in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" not in r.data.tags]


@pytest.mark.slow
def test_dvc_repro_then_experiments(repo: Path):
    run(["dvc", "repro"], repo)
    out = repo / "outputs"
    for path in ("train/checkpoints/best.pt", "train/checkpoints/last.pt", "train/metrics.json",
                 "train/history.csv", "evaluate/metrics.json", "evaluate/anytime.csv",
                 "evaluate/figures/anytime.png", "evaluate/figures/agreement.png", "flops/flops.json",
                 "flops/flops.png", "rdm/rdm.json", "rdm/figures/rdm.png", "train/figures"):
        assert (out / path).exists(), path
    evaluation = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert {"acc_exit1", "acc_main", "acc_ensemble"} <= set(evaluation["test"])
    training_runs = runs(repo)
    assert len(training_runs) == 1 and training_runs[0].data.tags["method"] == "eed"
    assert training_runs[0].info.status == "FINISHED"

    second = run(["dvc", "repro"], repo)
    assert "didn't change" in second.stdout or "Data and pipelines are up to date" in second.stdout, second.stdout
    assert len(runs(repo)) == 1

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    # Two processes (DDP through torchrun, gloo): the train stage relaunches itself; one run is logged.
    experiment = run(["dvc", "exp", "run", "-S", "method=branchynet", "-S", "train.nproc=2"], repo)
    assert "Running stage 'prepare'" not in experiment.stdout
    assert "Running stage 'train'" in experiment.stdout
    after = runs(repo)
    assert len(after) == 2
    branchynet = next(r for r in after if r.data.tags["method"] == "branchynet")
    assert branchynet.data.tags.get("dvc_exp"), branchynet.data.tags
    assert branchynet.info.status == "FINISHED" and branchynet.data.params["train.nproc"] == "2"

    # A queued experiment runs in a copy under .dvc/tmp/exps/ and must log to the same store.
    run(["dvc", "exp", "run", "--queue", "-S", "method=distill"], repo)
    run(["dvc", "queue", "start", "--jobs", "1"], repo)
    _wait_for_queue(repo)
    assert {r.data.tags["method"] for r in runs(repo)} == {"eed", "branchynet", "distill"}
    # So does a --temp one (a relative core.site_cache_dir once broke it: no such folder in the copy).
    run(["dvc", "exp", "run", "--temp", "-S", "method=baseline"], repo)
    assert {r.data.tags["method"] for r in runs(repo)} == {"eed", "branchynet", "distill", "baseline"}
    assert not (repo / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "acc_exit1" in text and "acc_main" in text and "branchynet" in text

    typo = run(["dvc", "exp", "run", "-S", "metohd=eed"], repo, check=False)
    assert typo.returncode != 0 and "metohd" in typo.stderr + typo.stdout

    bad_value = run(["dvc", "exp", "run", "-S", "method=eeed"], repo, check=False)
    assert bad_value.returncode != 0
    assert "method" in bad_value.stderr and "'eed'" in bad_value.stderr


def _wait_for_queue(repo: Path, timeout: float = 600) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            if "Failed" in status:
                raise AssertionError(f"queued experiment failed:\n{status}")
            return
        time.sleep(3)
    raise AssertionError("queued experiment did not finish")
