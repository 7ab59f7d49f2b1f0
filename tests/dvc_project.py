"""A tiny synthetic copy of the project's DVC pipeline in a new git + DVC repository, and the commands
that run in it: what the pipeline and sharing tests build on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
