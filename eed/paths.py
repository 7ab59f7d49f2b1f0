"""The project root, seen the same from the workspace and from DVC's temporary copies."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository the run belongs to (never a DVC temporary copy)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    # A copy under <repo>/.dvc/tmp/exps/... belongs to <repo>.
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for folder in (cwd, *cwd.parents):
        if (folder / ".dvc").is_dir() or (folder / "params.yaml").is_file():
            return folder
    return cwd
