"""Sharing trained results through a DVC remote, as README "Sharing results" describes: clone A runs the
pipeline (tiny synthetic params) and `dvc push`es to the project's default remote (a folder beside the
repository, configured in .dvc/config); clone B, in its own folder, `dvc pull`s, finds nothing to re-run
and evaluates the pulled checkpoint; clone C fetches the registered model artifact with `dvc artifacts
get`; and the same push and pull through an SSH remote served by a real sshd on 127.0.0.1."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from tests.dvc_project import copy_of, first_run, run
from tests.ssh_server import SshServer, install

CHECKPOINT = Path("outputs/train/checkpoints/best.pt")
UP_TO_DATE = "Data and pipelines are up to date."


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Path:
    """Clone A: the pipeline run once (the session's first run, shared with tests/test_pipeline.py: a
    copy), committed, its model registered (GTO tag), pushed to the default remote."""
    a = copy_of(first_run(tmp_path_factory)[0], tmp_path_factory.mktemp("sharing") / "a")
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "trained"], a)
    run(["gto", "register", "eed-model"], a)
    run(["dvc", "push"], a)
    return a


def clone(origin: Path, folder: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(folder)], origin.parent)
    return folder


def test_the_default_remote_is_a_folder_beside_the_repository(pushed):
    remote = pushed.parent / "eed-dvc-remote"
    assert run(["dvc", "remote", "default"], pushed).stdout.strip() == "shared"
    assert (remote / "files" / "md5").is_dir() and any((remote / "files" / "md5").iterdir())
    assert "Cache and remote 'shared' are in sync." in run(["dvc", "status", "--cloud"], pushed).stdout


def test_a_second_clone_pulls_the_results_and_reruns_nothing(pushed):
    b = clone(pushed, pushed.parent / "b")
    assert not (b / CHECKPOINT).exists()
    run(["dvc", "pull"], b)
    assert filecmp.cmp(b / CHECKPOINT, pushed / CHECKPOINT, shallow=False)
    assert UP_TO_DATE in run(["dvc", "status"], b).stdout
    again = run(["dvc", "repro"], b)
    assert "Running stage" not in again.stdout, again.stdout
    evaluated = run(["eed", "evaluate", str(CHECKPOINT)], b)
    assert "exit1" in evaluated.stdout and "main" in evaluated.stdout, evaluated.stdout


def test_a_clone_fetches_the_registered_model_artifact(pushed, tmp_path):
    c = clone(pushed, pushed.parent / "c")
    run(["dvc", "artifacts", "get", ".", "eed-model", "-o", str(tmp_path / "model.pt")], c)
    assert filecmp.cmp(tmp_path / "model.pt", pushed / CHECKPOINT, shallow=False)
    assert not (c / CHECKPOINT).exists()  # fetched for the caller, the clone's workspace untouched


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    reason = install()
    if reason is not None:
        pytest.skip(f"no SSH server for the SSH remote test: {reason}")
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def use_ssh_remote(repo: Path, server: SshServer, folder: Path) -> None:
    """README's SSH remote: the URL in .dvc/config.local (this machine's), the key beside it, made the default."""
    run(["dvc", "remote", "add", "--local", "-d", "ssh", server.url(folder)], repo)
    run(["dvc", "remote", "modify", "--local", "ssh", "keyfile", str(server.key)], repo)


def test_push_and_pull_through_an_ssh_remote(pushed, sshd, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ssh-remote")
    use_ssh_remote(pushed, sshd, storage)
    try:
        run(["dvc", "push"], pushed)
    finally:
        run(["dvc", "remote", "remove", "--local", "ssh"], pushed)
    assert any((storage / "files" / "md5").iterdir())
    d = clone(pushed, tmp_path_factory.mktemp("elsewhere") / "d")  # no default remote beside it
    use_ssh_remote(d, sshd, storage)
    run(["dvc", "pull"], d)
    assert filecmp.cmp(d / CHECKPOINT, pushed / CHECKPOINT, shallow=False)
    assert UP_TO_DATE in run(["dvc", "status"], d).stdout
