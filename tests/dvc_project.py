"""A tiny synthetic copy of the project's DVC pipeline in a new git + DVC repository, and the commands
that run in it: what the pipeline and sharing tests build on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data.dataset": "synthetic",
    "data.backend": "tensor",
    "data.val_size": 64,
    "data.train_subset": 0,
    "data.synthetic.num_train": 320,
    "data.synthetic.num_test": 128,
    "model.width": 4,
    "train.epochs": 1,
    "train.batch_size": 64,
    "train.device": "cpu",
    "eval.rdm_samples": 60,
    "eval.rdm_classes": 3,
    "eval.budgets": [0.001],
    "eval.thresholds": 11,
}


def set_key(params: dict, dotted: str, value: object) -> None:
    *path, key = dotted.split(".")
    node = params
    for part in path:
        node = node[part]
    assert key in node, dotted
    node[key] = value


def make_project(repo: Path) -> Path:
    """A new repository at ``repo`` holding the project's pipeline (its DVC settings included) with tiny
    params, committed."""
    repo.mkdir(parents=True)
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
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots", dirs_exist_ok=True)  # and plot templates
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny pipeline's repository right after its first ``dvc repro`` (nothing committed since
    :func:`make_project`), and what that repro printed. Made once per test session and shared by the
    xdist workers (the first to ask makes it, under a file lock, beside their temporary folders);
    never changed afterwards: take a :func:`copy_of` it to go on from there."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    folder = shared / "tiny-pipeline-first-run"
    with open(shared / "tiny-pipeline-first-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            repo = make_project(folder / "repo")
            repro = run(["dvc", "repro"], repo)
            (folder / "repro.out").write_text(repro.stdout)
            (folder / "repro.err").write_text(repro.stderr)
            (folder / "done").touch()
    said = subprocess.CompletedProcess(
        ["dvc", "repro"], 0, (folder / "repro.out").read_text(), (folder / "repro.err").read_text()
    )
    return folder / "repo", said


def copy_of(repo: Path, target: Path) -> Path:
    """A copy of ``repo`` (git, DVC cache, outputs, MLflow store) at ``target``, its MLflow store's
    absolute paths (each experiment's artifact folder, each run's) moved with it."""
    shutil.copytree(repo, target, symlinks=True)
    database = target / "mlflow.db"
    if database.is_file():
        with contextlib.closing(sqlite3.connect(database)) as store:
            tables = [name for (name,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for column in [
                    row[1]
                    for row in store.execute(f'PRAGMA table_info("{table}")')
                    if "CHAR" in row[2].upper() or "TEXT" in row[2].upper()
                ]:
                    store.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (str(repo), str(target), str(repo)),
                    )
            store.commit()
    return target


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
        raise AssertionError(
            f"{' '.join(command)} failed ({completed.returncode}):\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
        )
    return completed
