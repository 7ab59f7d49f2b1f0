"""`eed flops ARCH`: Table III for one architecture, optionally as flops.json + flops.png."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from eed.commands.common import fail


def flops(
    arch: Annotated[str, typer.Argument(help="Registered architecture (see `eed models`).")],
    width: Annotated[Optional[int], typer.Option(
        min=1, help="Channels of the first stage (default: the architecture's own).")] = None,
    num_classes: Annotated[Optional[int], typer.Option(
        min=1, help="Classes (default: 100 for CIFAR architectures, 1000 for ImageNet).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write flops.json and flops.png to.")] = None,
) -> None:
    """GFLOPs and parameters needed to obtain each output (the paper's Table III)."""
    from eed.flops import arch_profile, save_flops_figure, write_flops_json

    try:
        profile = arch_profile(arch, num_classes, width)
    except (KeyError, ValueError) as error:
        fail(str(error.args[0]) if error.args else str(error))
    size = profile.input_size
    table = Table(title=f"{arch}: width {profile.width}, {profile.num_classes} classes, {size}x{size} input")
    for column in ("output", "GFLOPs", "params (M)", "% of main"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for output, percent in zip(profile.outputs, profile.percent_of_main()):
        table.add_row(output.name, f"{output.gflops:.3f}", f"{output.params / 1e6:.2f}", f"{percent:.1f}")
    console = Console()
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_flops_json(profile, out / "flops.json")
        save_flops_figure(profile, out / "flops.png")
        console.print(f"wrote {out / 'flops.json'} and {out / 'flops.png'}")
