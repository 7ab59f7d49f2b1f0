"""``eed prepare`` and the prepare stage."""

from __future__ import annotations

from eed import data as eed_data
from eed.config import Config
from eed.stages import stderr


def prepare(config: Config):
    """``eed prepare`` and the prepare stage: the FFCV ``.beton`` files and manifest."""
    console = stderr()
    result = eed_data.prepare(config, console=console)
    if not result.up_to_date:
        console.print(f"[green]Wrote {len(result.files)} .beton files and the manifest to {result.directory}")
    return result
