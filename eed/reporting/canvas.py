"""The canvas every eed figure is drawn on and saved from: a constrained-layout
:class:`~matplotlib.figure.Figure` on the Agg canvas (no pyplot, so no global state, no display
and nothing to close by hand: safe from a training process or a test), saved as a PNG at
:data:`DPI` and a byte-stable SVG with the same stem, with the title and caption every figure
carries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.axes import Axes


# Print resolution: a 6.4 in wide figure is 1280 px.
DPI = 200
# The SVG backend derives clip-path and glyph ids from this salt (default: random per save), and
# writes the date unless told not to: fixed, the same figure gives the same bytes, so DVC sees
# no change when a stage reruns on the same data.
SVG_HASHSALT = "eed"
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def svg_path(png: str | Path) -> Path:
    return Path(png).with_suffix(".svg")


def save_figure_files(figure: Figure, path: str | Path) -> list[Path]:
    """Write ``path`` (PNG at :data:`DPI`) and the SVG beside it; returns ``[svg, png]``, the PNG
    last so that ``files[-1]`` stays the image to show."""
    png = Path(path)
    png.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}):
        figure.savefig(png, dpi=DPI, format="png")
        figure.savefig(svg_path(png), format="svg", metadata={"Date": None})
    return [svg_path(png), png]


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write the PNG and the SVG of ``figure``; returns the PNG path."""
    return save_figure_files(figure, path)[-1]


def saved_files(png: Path | None) -> list[Path]:
    """Every file :func:`save_figure` wrote for the PNG path it returned (none for None)."""
    return [] if png is None else [svg_path(png), png]


def title(figure: Figure, title: str, caption: str = "") -> None:
    """The figure's title, with the configuration caption as a second line."""
    figure.suptitle(f"{title}\n{caption}" if caption else title)


def split_name(split: str) -> str:
    return SPLIT_NAMES.get(split, split)


def integer_epochs(axes: Axes) -> None:
    """Epochs are whole numbers: no 1.5 ticks on a short run."""
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
