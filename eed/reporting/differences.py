"""Differences between rows of a comparison (``eed compare --against``): does a method beat the
reference method, by how much, and how sure is that.

Each row is compared with ONE reference row, which differs from it only in what is being
compared:

* a method against the reference method (default: branchynet) trained under the same setup
  (every setting but the method and its loss keys); where several reference rows fit (the
  reference distils with several losses), the one with the same loss settings;
* an eed row with a teacher subset (the paper's Table IV) against the eed row whose teacher
  is every classifier, all else equal.

For every output the difference is row minus reference, in accuracy, paired over the seeds
the two rows share, with a Student-t interval (:mod:`eed.metrics.intervals`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from eed.metrics.intervals import CONFIDENCE, Difference, seed_difference
from eed.reporting.comparison import NOT_APPLICABLE, PERCENT, ComparisonRow, ComparisonTable, is_setup

ALL_TEACHER = "all"
DEFAULT_AGAINST = "branchynet"


@dataclass
class RowDifference:
    row: ComparisonRow
    reference: ComparisonRow
    against: str  # what the reference is: "branchynet", "teacher all"
    outputs: dict[str, Difference]  # column -> row minus reference (fractions)

    @property
    def n(self) -> int:
        return max((difference.n for difference in self.outputs.values()), default=0)

    @property
    def pairing(self) -> str:
        kinds = {difference.pairing for difference in self.outputs.values()}
        return "paired" if kinds == {"paired"} else "/".join(sorted(kinds))


def _same_except(row: ComparisonRow, other: ComparisonRow, names: list[str]) -> bool:
    return all(row.key[name] == other.key[name] for name in names)


def reference_of(row: ComparisonRow, table: ComparisonTable, against: str | None) -> tuple[ComparisonRow, str] | None:
    """The row ``row`` is compared with, and what it is; None when there is none (or no single one)."""
    teacher = row.key.get("loss.teacher", NOT_APPLICABLE)
    if teacher not in (ALL_TEACHER, NOT_APPLICABLE, "?"):
        others = [name for name in table.settings if name != "loss.teacher"]
        found = [
            other
            for other in table.rows
            if other.key.get("loss.teacher") == ALL_TEACHER and _same_except(row, other, others)
        ]
        return (found[0], f"teacher {ALL_TEACHER}") if len(found) == 1 else None
    if against is None or row.key.get("method") == against:
        return None
    setup = [name for name in table.settings if is_setup(name)]
    found = [other for other in table.rows if other.key.get("method") == against and _same_except(row, other, setup)]
    if len(found) > 1:  # the reference distils too: the one trained with the same loss settings
        loss = [name for name in table.settings if name.startswith("loss.")]
        found = [other for other in found if all(other.key[name] in (row.key[name], NOT_APPLICABLE) for name in loss)]
    return (found[0], against) if len(found) == 1 else None


def differences(
    table: ComparisonTable, against: str | None = None, confidence: float = CONFIDENCE
) -> list[RowDifference]:
    """Every row that has a reference, in table order, with its difference per output.
    ``against`` None: branchynet when the table has it, else only teacher subsets are compared."""
    if against is None and any(row.key.get("method") == DEFAULT_AGAINST for row in table.rows):
        against = DEFAULT_AGAINST
    found = []
    for row in table.rows:
        reference = reference_of(row, table, against)
        if reference is None:
            continue
        other, what = reference
        outputs = {
            column: seed_difference(row.by_seed(column), other.by_seed(column), confidence)
            for column in table.columns
            if row.by_seed(column) and other.by_seed(column)
        }
        found.append(RowDifference(row, other, what, outputs))
    return found


def format_difference(difference: Difference | None, stacked: bool = False) -> str:
    """``+1.23* [+0.40, +2.06]`` in percentage points (``*``: the interval excludes 0); without an
    interval just the difference (the n and pairing columns say why). ``stacked``: the difference,
    then the interval's ends on two lines below it (narrow columns, for the console)."""
    if difference is None:
        return "-"
    text = f"{PERCENT * difference.mean:+.2f}"
    if not difference.has_interval:
        return text
    low, high = f"[{PERCENT * difference.low:+.2f},", f"{PERCENT * difference.high:+.2f}]"  # type: ignore[operator]
    return f"{text}{'*' if difference.excludes_zero else ''}" + (f"\n{low}\n{high}" if stacked else f" {low} {high}")


def pairing_text(found: RowDifference) -> str:
    if found.pairing == "none":
        return f"n = {found.n}, no interval"
    return {"paired": "paired by seed", "welch": "Welch (no shared seeds)"}.get(found.pairing, found.pairing)


def title_of(confidence: float = CONFIDENCE) -> str:
    return (
        f"Difference from the reference row, percentage points (row − reference), with its "
        f"{100 * confidence:.0f} % confidence interval"
    )


def legend(confidence: float = CONFIDENCE) -> str:
    return (
        f"Student t on the per-seed differences of the seeds both rows share (n − 1 degrees of freedom); "
        f"Welch's interval over all runs where they share fewer than two; * the {100 * confidence:.0f} % "
        f"interval excludes 0"
    )


def rich_table(found: list[RowDifference], columns: list[str]) -> Table:
    """The console's table of differences, made to be read at 80 columns: each cell the difference
    over the two ends of its interval (three lines); the labels folded, never dropped."""
    table = Table(
        title=title_of(),
        caption=legend(),
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("Row", overflow="fold", min_width=9)
    table.add_column("vs", overflow="fold", min_width=10)
    table.add_column("n", justify="right", min_width=2)
    for column in columns:
        table.add_column(ComparisonTable.short_title(column), justify="right", no_wrap=True)
    for item in found:
        cells = [
            Text(
                format_difference(item.outputs.get(column), stacked=True),
                style="bold" if column in item.outputs and item.outputs[column].excludes_zero else "",
            )
            for column in columns
        ]
        n = str(item.n) if item.pairing != "none" else f"{item.n}, no interval"
        table.add_row(Text(item.row.label), Text(item.against), n, *cells, end_section=True)
    return table


def to_markdown(found: list[RowDifference], columns: list[str]) -> str:
    header = ["Row", "vs", "n", "Pairing", *(ComparisonTable.column_title(column) for column in columns)]
    lines = [
        f"{title_of()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 4 + ["--:"] * len(columns)) + "|",
    ]
    for item in found:
        cells = [format_difference(item.outputs.get(column)) for column in columns]
        lines.append("| " + " | ".join([item.row.label, item.against, str(item.n), pairing_text(item), *cells]) + " |")
    return "\n".join([*lines, "", f"{legend()}."]) + "\n"


def write_csv(found: list[RowDifference], columns: list[str], path: str | Path) -> Path:
    """One line per compared row: row, reference, pairing, n, and per output the difference and its
    interval in percentage points (empty without one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "row",
                "against",
                "pairing",
                "n",
                *(f"{column}_{stat}_pts" for column in columns for stat in ("diff", "low", "high")),
            ]
        )
        for item in found:
            stats = []
            for column in columns:
                difference = item.outputs.get(column)
                stats += (
                    ["", "", ""]
                    if difference is None
                    else [
                        f"{PERCENT * value:.6g}" if value is not None else ""
                        for value in (difference.mean, difference.low, difference.high)
                    ]
                )
            writer.writerow([item.row.label, item.against, item.pairing, item.n, *stats])
    return path
