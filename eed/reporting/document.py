"""A report as a list of blocks (headings, paragraphs, tables, images), written once as Markdown
and once as a self-contained HTML page (images embedded as data URIs, so the page can be mailed
or attached to an issue as one file). A line break inside a table cell is ``\\n``."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class TableBlock:
    header: list[str]
    rows: list[list[str]]
    right_aligned: set[int] = field(default_factory=set)  # columns of numbers


@dataclass
class Image:
    caption: str
    path: Path


Block = Heading | Paragraph | TableBlock | Image


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def to_markdown(blocks: list[Block], folder: Path) -> str:
    """The blocks as Markdown, images linked relative to ``folder`` (where the file is written)."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, TableBlock):
            alignment = ["--:" if i in block.right_aligned else "---" for i in range(len(block.header))]
            lines += ["| " + " | ".join(map(_markdown_cell, block.header)) + " |", "|" + "|".join(alignment) + "|"]
            lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{block.caption}]({os.path.relpath(block.path, folder)})", "", f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
    "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;"
    "vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}"
    "figure{margin:1rem 0}img{max-width:100%}figcaption{font-style:italic}"
)


def _html_cell(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.split("\n"))


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, TableBlock):
        head = "".join(f"<th>{_html_cell(cell)}</th>" for cell in block.header)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{' class=n' if i in block.right_aligned else ''}>{_html_cell(cell)}</td>"
                for i, cell in enumerate(row)
            )
            + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    data = base64.b64encode(block.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
    )


def to_html(blocks: list[Block], title: str) -> str:
    """The blocks as one HTML page that needs no other file."""
    body = "\n".join(_html_block(block) for block in blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
