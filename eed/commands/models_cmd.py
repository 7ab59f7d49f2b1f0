"""`eed models`: the backbone registry as a table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table


def models(
    width: Annotated[Optional[int], typer.Option(
        min=1, help="Channels of the first stage for every row (default: each architecture's own).")] = None,
) -> None:
    """List the registered backbones: family, input size, exits, parameters, main-output GFLOPs."""
    from eed.flops import summarize_backbones

    table = Table(title="Registered backbones (params include the exits; CIFAR: 100 classes, ImageNet: 1000)")
    for column in ("name", "family", "input", "exits", "width", "params (M)", "main GFLOPs"):
        table.add_column(column, justify="left" if column in ("name", "family") else "right")
    for row in summarize_backbones(width):
        if row.error:
            table.add_row(row.name, row.family, str(row.input_size), "-", str(row.width), "-", f"[red]{row.error}[/]")
        else:
            table.add_row(row.name, row.family, str(row.input_size), str(row.num_exits), str(row.width),
                          f"{row.params / 1e6:.2f}", f"{row.main_gflops:.3f}")
    Console().print(table)
