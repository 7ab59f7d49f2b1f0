"""`make lint`, CI and the pre-commit hooks run the same tools at the same versions: the ones pyproject.toml
pins, installed in the project's environment; and the hooks really run on a commit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pinned() -> dict[str, str]:
    """The exact pins (name==version) of pyproject.toml's dependencies."""
    text = (ROOT / "pyproject.toml").read_text()
    return dict(re.findall(r'"([a-z-]+)(?:\[\w+\])?==([\d.]+)"', text))


def test_the_linters_are_pinned_and_installed_at_those_versions():
    versions = pinned()
    assert set(versions) >= {"ruff", "pyright"}, versions
    ruff = subprocess.run([BIN / "ruff", "--version"], capture_output=True, text=True, check=True).stdout
    pyright = subprocess.run([BIN / "pyright", "--version"], capture_output=True, text=True, check=True).stdout
    assert ruff.split()[-1] == versions["ruff"] and pyright.split()[-1] == versions["pyright"], (ruff, pyright)


def test_make_lint_ci_and_the_hooks_call_the_same_tools():
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert [line.strip() for line in lint.splitlines()[1:]] == [
        "$(BIN)/ruff check .",
        "$(BIN)/ruff format --check .",
        "$(BIN)/pyright",
    ]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-2:] == ["make lint", "make test"]
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert [hook["entry"].split()[0] for hook in hooks] == [".venv/bin/ruff", ".venv/bin/ruff", ".venv/bin/pyright"]


def test_the_pre_commit_hooks_refuse_a_badly_formatted_file_and_pass_a_clean_one(tmp_path):
    """pre-commit, run as a user runs it, in a copy of the project with the venv linked in."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in (".pre-commit-config.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "eed").mkdir()
    (repo / ".venv").symlink_to(BIN.parent)
    (repo / ".gitignore").write_text(".venv\n")
    environment = {"HOME": str(tmp_path), "PATH": f"{BIN}:/usr/bin:/bin", "PRE_COMMIT_HOME": str(tmp_path / "cache")}

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", *arguments],
            cwd=repo,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )

    git("init", "-q")
    assert (
        subprocess.run([BIN / "pre-commit", "install"], cwd=repo, env=environment, capture_output=True).returncode == 0
    )
    (repo / "eed" / "module.py").write_text("import os\nx = {  'a':1 }\n")
    git("add", "-A")
    refused = git("commit", "-qm", "bad")
    assert refused.returncode != 0 and "F401" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    (repo / "eed" / "module.py").write_text('"""A module."""\n\nSIZE = {"a": 1}\n')
    git("add", "-A")
    accepted = git("commit", "-qm", "good")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
