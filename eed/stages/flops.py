"""``eed models``, ``eed flops`` and the flops stage: the registry and Table III."""

from __future__ import annotations

from pathlib import Path

from eed import data as eed_data
from eed.config import Config
from eed.metrics.flops import FlopsProfile, arch_profile, summarize_backbones
from eed.models.from_config import resolve_architecture
from eed.models.registry import get_spec
from eed.paths import in_workspace
from eed.reporting import tables
from eed.reporting.files import write_flops_outputs
from eed.reporting.records import figure_caption
from eed.stages import stdout


def models(width: int | None = None) -> None:
    """``eed models``: the backbone registry as a table."""
    stdout().print(tables.backbones_table(summarize_backbones(width)))


def flops(
    arch: str, *, width: int | None = None, num_classes: int | None = None, out: Path | None = None, caption: str = ""
) -> FlopsProfile:
    """``eed flops`` and the flops stage: Table III of ``arch``; with ``out``, also
    ``flops.json`` and ``figures/flops.png`` there."""
    get_spec(arch, given_as="ARCH")  # the command's argument (the stage checked model.arch already)
    profile = arch_profile(arch, num_classes, width)
    console = stdout()
    console.print(tables.flops_table(profile))
    if out is not None:
        files = write_flops_outputs(profile, out, caption=caption)
        console.print(f"wrote {' and '.join(str(f) for f in files)}")
    return profile


def flops_stage(config: Config) -> FlopsProfile:
    """The flops stage: the configured network, with the prepared dataset's class count."""
    config = resolve_architecture(config)
    return flops(
        config.model.arch,
        width=config.model.width,
        num_classes=eed_data.load_manifest(config).num_classes,
        out=in_workspace(config.paths.out_dir) / "flops",
        caption=figure_caption(config),
    )
