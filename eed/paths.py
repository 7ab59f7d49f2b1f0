"""Which project a command belongs to, found as git and DVC find their repository: the first
folder, from the current one upward, that holds ``params.yaml`` or ``.dvc/``.

Two roots, which differ only inside a DVC temporary copy (``dvc exp run --temp/--queue`` runs
in ``<repo>/.dvc/tmp/exps/<name>/``, a copy holding the experiment's ``params.yaml`` and
outputs, with ``$DVC_ROOT`` set to the repository):

* :func:`workspace_root`: where the params file and the stages' outputs are (the copy);
* :func:`project_root`: the repository the run belongs to (never the copy), for what is
  shared between runs: the raw data and the MLflow store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from eed.errors import ConfigError

PARAMS_FILE = "params.yaml"
DVC_DIR = ".dvc"


def find_workspace(start: str | Path | None = None) -> Path | None:
    """The first folder from ``start`` (default: the current one) upward holding
    ``params.yaml`` or ``.dvc/``; None outside any project."""
    folder = Path(start if start is not None else Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / PARAMS_FILE).is_file() or (candidate / DVC_DIR).is_dir():
            return candidate
    return None


def workspace_root() -> Path:
    """The project folder holding this run's params file and outputs (in a DVC temporary
    copy: the copy); the current folder outside any project."""
    return find_workspace() or Path.cwd().resolve()


def in_workspace(path: str | Path) -> Path:
    """``path`` (``~`` expanded) as is when absolute, else taken from :func:`workspace_root`,
    so a relative ``data.prepared_dir`` or ``paths.out_dir`` means the same from a subfolder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else workspace_root() / path


def project_root() -> Path:
    """The repository the run belongs to (never a DVC temporary copy)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    # A copy under <repo>/.dvc/tmp/exps/... belongs to <repo>.
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (DVC_DIR, "tmp", "exps"):
            return Path(*parts[:i])
    return find_workspace(cwd) or cwd


def ensure_writable(folder: str | Path) -> Path:
    """Prove that ``folder`` can be written (it, or the nearest folder above it that exists, takes a
    file) before the work whose results go there: an unwritable folder fails in one line now, not
    after an epoch or a whole pass. Nothing is created: a command that fails later leaves no new
    folder behind (the writers create it)."""
    folder = Path(folder)
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():  # mkdir would say "File exists", which reads as a refusal
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".eed-write-check-"):
        pass
    return folder


LOCK_FILE = ".eed-train.lock"


@contextlib.contextmanager
def training_lock(folder: str | Path) -> Iterator[Path]:
    """An exclusive lock on ``folder`` (``.eed-train.lock`` in it, holding this process's pid) for
    the block: a second training into the same folder is refused in one line naming the holder.
    When the block fails, the folders it created are removed again if nothing but the lock is in
    them (a failed command leaves no new folder)."""
    folder = Path(folder)
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    if not next(parent for parent in (folder, *folder.parents) if parent.exists()).is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held until the caller releases the lock)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"{folder} is in use by another training (pid {holder}); wait for it to end, "
                "or train into another --out (or paths.out_dir)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield folder
    except BaseException:
        _remove_if_only_lock(created)
        raise
    finally:
        handle.close()  # releases the lock


def _remove_if_only_lock(created: list[Path]) -> None:
    """Remove the folders a failed block created (deepest first), each only when it holds nothing
    else than the lock file and the folders removed before it."""
    for folder in created:
        leftovers = list(folder.iterdir()) if folder.is_dir() else []
        if all(entry.name == LOCK_FILE for entry in leftovers):
            for entry in leftovers:
                entry.unlink()
            folder.rmdir()


def ensure_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Raise ENOSPC (one line through the error boundary) when ``folder``'s file system has less
    than ``needed_bytes`` free for ``what``."""
    import shutil

    existing = next(parent for parent in (Path(folder), *Path(folder).parents) if parent.exists())
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"No space left for {what}: {free / 2**20:,.0f} MiB free, {needed_bytes / 2**20:,.0f} MiB needed",
            str(folder),
        )
