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

import os
from pathlib import Path

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
        if parts[i:i + 3] == (DVC_DIR, "tmp", "exps"):
            return Path(*parts[:i])
    return find_workspace(cwd) or cwd


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and prove a file can be written in it, before the work whose results
    go there: an unwritable folder fails in one line now, not after an epoch or a whole pass."""
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():  # mkdir would say "File exists", which reads as a refusal
        import errno

        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".eed-write-check-"):
        pass
    return folder


def ensure_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Raise ENOSPC (one line through the error boundary) when ``folder``'s file system has less
    than ``needed_bytes`` free for ``what``."""
    import errno
    import shutil

    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(errno.ENOSPC, f"No space left for {what}: {free / 2**20:,.0f} MiB free, "
                                    f"{needed_bytes / 2**20:,.0f} MiB needed", str(folder))
