"""``eed resolve`` and the resolve stage: the values a run uses where params.yaml says null.

params.yaml leaves the preset-controlled keys (``train.epochs``, ``model.width``, ...) null,
so ``dvc exp show`` would show them as ``-``. This stage writes what they resolve to under
``resolved:`` in ``<paths.out_dir>/resolved.yaml``, and the stages after it list those values
as params: DVC shows them (``resolved.train.epochs``) and re-runs a stage when one changes,
e.g. when ``scale`` switches the preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from eed.config import Config, preset_values
from eed.models.from_config import resolve_architecture
from eed.paths import ensure_writable, in_workspace
from eed.stages import stdout

RESOLVED_FILE = "resolved.yaml"
RESOLVED_SECTION = "resolved"


def resolve(config: Config, *, out: Path | None = None) -> dict[str, Any]:
    """Write ``{resolved: {section: {key: value}}}`` to ``out`` (default
    ``<paths.out_dir>/resolved.yaml``) and print it; returns the mapping."""
    config = resolve_architecture(config)  # model.arch checked, model.width filled
    path = Path(out or in_workspace(config.paths.out_dir) / RESOLVED_FILE)
    values = {RESOLVED_SECTION: preset_values(config)}
    text = (
        f"# What params.yaml's null keys resolve to (scale: {config.scale}, reference: {config.reference}); "
        f"written by the resolve stage.\n" + yaml.safe_dump(values, sort_keys=False)
    )
    ensure_writable(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    console = stdout()
    flat = [
        f"{section}.{key}={value}" for section, keys in values[RESOLVED_SECTION].items() for key, value in keys.items()
    ]
    console.print(f"{config.scale} preset, {config.reference} reference: {' '.join(flat)}", highlight=False)
    console.print(f"wrote {path}", highlight=False)
    return values
