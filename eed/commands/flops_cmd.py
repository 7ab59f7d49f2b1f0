"""`eed flops ARCH`: parse, call :func:`eed.stages.flops.flops`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.errors import guarded


@guarded
def flops(
    arch: Annotated[str, typer.Argument(help="Registered architecture (see `eed models`).")],
    width: Annotated[
        int | None, typer.Option(min=1, help="Channels of the first stage (default: the architecture's own).")
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(min=1, help="Classes (default: 100 for CIFAR architectures, 1000 for ImageNet).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write flops.json and figures/flops.png to.")] = None,
) -> None:
    """GFLOPs and parameters needed to obtain each output (the paper's Table III)."""
    from eed.stages import flops as stage

    stage.flops(arch, width=width, num_classes=num_classes, out=out)
