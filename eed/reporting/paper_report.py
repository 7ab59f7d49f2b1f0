"""The reproduction report (``eed paper``): the store's runs beside the paper's numbers.

* Tables I/II: per network, every configuration the store has and every row the paper has, each
  cell "ours: mean ± std (n)" over "paper"; each configuration twice, once per test accuracy
  (best.pt, selected on validation; and the max over epochs, the paper's protocol as far as it
  can be told), its protocol (scale, width, epochs, schedule, images) in its own column; then its
  difference from branchynet with the interval (:mod:`eed.reporting.differences`). A paper row
  without runs says so.
* Table III: GFLOPs per output, computed for each network at the width it was trained at and at
  its own width, beside the paper's.
* Table IV: eed with teacher subsets, where there are runs.
* Figures 2-5 of one run per method.

Built as blocks (:mod:`eed.reporting.document`), written as Markdown and as one HTML page.
"""

from __future__ import annotations

import ast
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eed.paper_numbers import PaperAccuracy, load_paper_numbers, paper_accuracy
from eed.reporting.comparison import NOT_APPLICABLE, ComparisonRow, ComparisonTable
from eed.reporting.differences import RowDifference, format_difference, pairing_text
from eed.reporting.document import Block, Heading, Paragraph, TableBlock

if TYPE_CHECKING:
    from eed.metrics.flops import FlopsProfile

OUTPUTS = ("exit1", "exit2", "exit3", "main", "ensemble")
NO_RUNS = "no runs"
LOSS_TITLES = {
    "loss.output": "l_z",
    "loss.alpha": "α",
    "loss.beta": "β",
    "loss.temperature": "T",
    "loss.teacher": "teacher",
}


@dataclass
class ReportInputs:
    selected: ComparisonTable  # test/acc_*: best.pt, the epoch chosen on validation
    max_over_epochs: ComparisonTable | None  # test/max_acc_*: each output's best epoch on test
    differences: list[RowDifference]  # of ``selected``'s rows, against their references
    flops: list[FlopsProfile]  # each network at its trained width and its own
    figures: list[Block] = field(default_factory=list)  # images, and a line for each one missing
    store: str = ""


def network_of(row: ComparisonRow) -> tuple[str, str]:
    return row.key.get("data.dataset", "?"), row.key.get("model.arch", "?")


def loss_of(row: ComparisonRow) -> dict[str, Any]:
    """The loss settings the row's method reads (by short name, as the paper's numbers name them);
    a teacher subset as the list it was logged as (``"[1, 'main']"``)."""
    loss: dict[str, Any] = {
        name.removeprefix("loss."): value
        for name, value in row.key.items()
        if name.startswith("loss.") and value != NOT_APPLICABLE
    }
    if str(loss.get("teacher", "")).startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            loss["teacher"] = ast.literal_eval(loss["teacher"])
    return loss


def paper_rows(row: ComparisonRow) -> list[PaperAccuracy]:
    dataset, arch = network_of(row)
    return paper_accuracy(dataset, arch, row.key.get("method", "?"), loss_of(row))


def protocol(row: ComparisonRow) -> str:
    """What training the row's runs had, in a few words."""
    key = row.key
    subset, val = key.get("data.train_subset", "?"), key.get("data.val_size", "?")
    images = "all training images" if subset == "0" else f"{subset} training images"
    return (
        f"scale {key.get('scale', '?')}, width {key.get('model.width', '?')}, {key.get('train.epochs', '?')} "
        f"epochs {key.get('train.schedule', '?')}, {images}, validation split {val}; "
        f"seeds {', '.join(dict.fromkeys(row.seeds))}"
    )


def configuration(method: str, loss: dict) -> str:
    settings = ", ".join(f"{LOSS_TITLES.get('loss.' + name, name)}={value}" for name, value in loss.items())
    return f"{method} ({settings})" if settings else method


def _ours(row: ComparisonRow | None, column: str) -> str:
    cell = row.cells.get(column) if row is not None else None
    return "-" if cell is None else cell.format()


def _paper(entry: PaperAccuracy | None, column: str) -> str:
    if entry is None or column not in entry.percent:
        return ""
    return f"\npaper {entry.percent[column]:.2f}"


def accuracy_rows(
    selected: list[ComparisonRow], max_table: ComparisonTable | None, columns: list[str]
) -> list[list[str]]:
    """Two lines per configuration (best.pt; max over epochs), each cell ours over the paper's."""
    rows = []
    for row in selected:
        entry = (paper_rows(row) or [None])[0]
        twin = next((other for other in (max_table.rows if max_table else []) if other.key == row.key), None)
        where = f"Table {entry.table}: {entry.row}" if entry else "not in the paper"
        name = configuration(row.key.get("method", "?"), loss_of(row))
        rows.append(
            [
                name,
                where,
                f"{protocol(row)}; test accuracy of best.pt (epoch chosen on validation)",
                str(row.n),
                *(_ours(row, column) + _paper(entry, column) for column in columns),
            ]
        )
        if twin is not None:
            rows.append(
                [
                    name,
                    where,
                    "the same runs; max over epochs (each output's best test epoch, as the paper "
                    "seems to report; optimistic)",
                    str(twin.n),
                    *(_ours(twin, column) + _paper(entry, column) for column in columns),
                ]
            )
    return rows


def missing_rows(
    dataset: str, arch: str, selected: list[ComparisonRow], columns: list[str], tables: tuple[str, ...] = ("I", "II")
) -> list[list[str]]:
    """The paper's rows of ``tables`` for this network that no configuration of the store matches."""
    covered = {id(entry) for row in selected for entry in paper_rows(row)}
    numbers = load_paper_numbers().accuracy
    return [
        [
            configuration(entry.method, entry.loss),
            f"Table {entry.table}: {entry.row}",
            NO_RUNS,
            "0",
            *(f"{NO_RUNS}{_paper(entry, column)}" for column in columns),
        ]
        for entry in numbers
        if (entry.dataset, entry.arch) == (dataset, arch) and entry.table in tables and id(entry) not in covered
    ]


def difference_table(found: list[RowDifference], columns: list[str]) -> TableBlock:
    header = ["Row", "vs", "n", "pairing", *(ComparisonTable.column_title(column) for column in columns)]
    rows = [
        [
            configuration(item.row.key.get("method", "?"), loss_of(item.row)),
            item.against,
            str(item.n),
            pairing_text(item),
            *(format_difference(item.outputs.get(column)) for column in columns),
        ]
        for item in found
    ]
    return TableBlock(header, rows, right_aligned={2, *range(4, 4 + len(columns))})


def accuracy_section(inputs: ReportInputs) -> list[Block]:
    """Tables I/II: one table per network of the store, then its differences."""
    table = inputs.selected
    blocks: list[Block] = [Heading("Tables I and II: test accuracy (%)")]
    blocks.append(
        Paragraph(
            "Each configuration of the store (its runs differ only in the seed) in two lines: the test accuracy of "
            "best.pt, the epoch chosen on validation (our number), and the maximum over epochs of each output on test "
            "(what the paper's numbers seem to be; it does not say which epoch it reports, nor over how many runs). "
            "Each cell: mean ± sample std over the n runs, over the paper's number for the same network, method and "
            "loss. A row of the paper the store has no runs for says so."
        )
    )
    networks = list(dict.fromkeys(network_of(row) for row in table.rows))
    for dataset, arch in networks:
        rows = [row for row in table.rows if network_of(row) == (dataset, arch)]
        header = ["Configuration", "Paper row", "Protocol", "n", *(table.column_title(c) for c in table.columns)]
        body = accuracy_rows(rows, inputs.max_over_epochs, table.columns)
        body += missing_rows(dataset, arch, rows, table.columns)
        blocks += [
            Heading(f"{arch} on {dataset}", 3),
            TableBlock(header, body, right_aligned={3, *range(4, 4 + len(table.columns))}),
        ]
        found = [
            item
            for item in inputs.differences
            if network_of(item.row) == (dataset, arch) and item.against != "teacher all"
        ]
        if found:
            blocks += [
                Paragraph(
                    f"{arch} on {dataset}: difference from the reference (row − reference), percentage "
                    "points, best.pt, with its 95 % confidence interval (Student t on the per-seed "
                    "differences; * the interval excludes 0)."
                ),
                difference_table(found, table.columns),
            ]
    return blocks


def flops_section(inputs: ReportInputs) -> list[Block]:
    """Table III: GFLOPs per output, ours (computed from the network, not stored) beside the paper's."""
    blocks: list[Block] = [Heading("Table III: GFLOPs per output")]
    if not inputs.flops:
        return [*blocks, Paragraph("No network to count: the store has no finished training runs.")]
    paper = {entry.arch: entry.gflops for entry in load_paper_numbers().gflops}
    columns = list(dict.fromkeys(output.name for profile in inputs.flops for output in profile.outputs))
    rows = []
    for profile in inputs.flops:
        costs = {output.name: output.gflops for output in profile.outputs}
        rows.append(
            [
                profile.arch or "?",
                f"ours, width {profile.width}",
                *(f"{costs[c]:.3g}" if c in costs else "-" for c in columns),
            ]
        )
    for arch in dict.fromkeys(profile.arch for profile in inputs.flops):
        if arch in paper:
            rows.append(
                [
                    arch,
                    "paper (its own width)",
                    *(f"{paper[arch][c]:.2f}" if c in paper[arch] else "-" for c in columns),
                ]
            )
    header = ["Network", "Counted", *(ComparisonTable.column_title(c) for c in columns)]
    note = Paragraph(
        "Ours: torch.utils.flop_counter on the network built at that width (one image, 2 FLOPs per "
        "multiply-add), computed here rather than read from a run; GFLOPs grow about as width²."
    )
    return [*blocks, note, TableBlock(header, rows, right_aligned=set(range(2, 2 + len(columns))))]


def teacher_section(inputs: ReportInputs) -> list[Block]:
    """Table IV: the main output of eed with each teacher subset, against the teacher of every classifier."""
    blocks: list[Block] = [Heading("Table IV: composition of the teacher")]
    rows = [
        row
        for row in inputs.selected.rows
        if any(entry.table == "IV" for entry in paper_rows(row))
        or row.key.get("loss.teacher", NOT_APPLICABLE) not in (NOT_APPLICABLE, "all")
    ]
    differences = {id(item.row): item for item in inputs.differences if item.against == "teacher all"}
    body = []
    for row in rows:
        entry = next((entry for entry in paper_rows(row) if entry.table == "IV"), None)
        twin = next(
            (
                other
                for other in (inputs.max_over_epochs.rows if inputs.max_over_epochs else [])
                if other.key == row.key
            ),
            None,
        )
        difference = differences.get(id(row))
        body.append(
            [
                configuration(row.key.get("method", "?"), loss_of(row)),
                protocol(row),
                str(row.n),
                _ours(row, "main"),
                _ours(twin, "main"),
                f"{entry.percent['main']:.2f}" if entry else "-",
                format_difference(difference.outputs.get("main")) if difference else "-",
            ]
        )
    covered = {id(entry) for row in rows for entry in paper_rows(row)}
    body += [
        [configuration(entry.method, entry.loss), NO_RUNS, "0", NO_RUNS, NO_RUNS, f"{entry.percent['main']:.2f}", "-"]
        for entry in load_paper_numbers().accuracy
        if entry.table == "IV" and id(entry) not in covered
    ]
    header = [
        "Configuration",
        "Protocol",
        "n",
        "Main, best.pt",
        "Main, max over epochs",
        "Paper",
        "Main − teacher all (pts, 95 % CI)",
    ]
    return [*blocks, TableBlock(header, body, right_aligned={2, 3, 4, 5, 6})]


def build_report(inputs: ReportInputs) -> list[Block]:
    """The whole report, as blocks."""
    numbers = load_paper_numbers()
    blocks: list[Block] = [
        Heading("Reproduction report: ours beside the paper", 1),
        Paragraph(
            f"Runs: the FINISHED training runs of {inputs.store or 'the MLflow store'}. Paper: {numbers.source}. "
            "Accuracies in %, differences in percentage points."
        ),
        *accuracy_section(inputs),
        *flops_section(inputs),
        *teacher_section(inputs),
        Heading("Figures 2-5: one run per method"),
    ]
    if not inputs.figures:
        blocks.append(Paragraph("No figures: none of the chosen runs logged them."))
    return [*blocks, *inputs.figures]
