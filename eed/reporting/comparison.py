"""The paper's Tables I/II from tracked training runs (``eed compare``).

Runs (:class:`eed.tracking.RunRecord`, selected by experiment, tag or id) are grouped by
configuration: network, dataset, method, output loss l_z, alpha and beta. Runs that share a
configuration (different seeds) become one row whose cells are ``mean ± std`` over the
runs (sample standard deviation, n shown); a row with one run shows just the value. The
columns are exit 1..k-1, main and the ensemble of all classifiers, read from the final
``test/acc_*`` metrics the trainer logs (``--split val`` reads ``val/acc_*``, the last
logged epoch). In each network/dataset group the best mean main accuracy is marked, as the
paper marks it in red.

Loss settings a method ignores are shown as "—" and do not split rows: baseline and
branchynet train with cross entropy only, and distill ignores beta.

Metrics are logged as fractions; tables and the figure show percent.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from rich.table import Table

from eed.config import METHODS
from eed.errors import ConfigError
from eed.models.multi_exit import output_order

if TYPE_CHECKING:
    from eed.tracking import RunRecord

# Configuration fields that define a row, and their column titles.
KEY_FIELDS: tuple[str, ...] = ("arch", "dataset", "method", "output", "alpha", "beta")
KEY_TITLES = {"arch": "Network", "dataset": "Dataset", "method": "Method", "output": "l_z",
              "alpha": "α", "beta": "β"}
NOT_APPLICABLE = "—"
PERCENT = 100.0


# --------------------------------------------------------------------------- grouping


def _number(text: str | None) -> str:
    """``"1.0"`` and ``"1"`` are the same alpha: compare formatted floats."""
    if text is None or text in ("", "None", "null"):
        return NOT_APPLICABLE
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def config_key(run: RunRecord) -> dict[str, str]:
    """The configuration a run belongs to, with settings its method ignores as "—"."""
    p, t = run.params, run.tags
    method = p.get("method") or t.get("method") or "unknown"
    key = {
        "arch": p.get("model.arch") or t.get("arch") or "unknown",
        "dataset": p.get("data.dataset") or t.get("dataset") or "unknown",
        "method": method,
        "output": p.get("loss.output", NOT_APPLICABLE),
        "alpha": _number(p.get("loss.alpha")),
        "beta": _number(p.get("loss.beta")),
    }
    if method in ("baseline", "branchynet"):
        key.update(output=NOT_APPLICABLE, alpha=NOT_APPLICABLE, beta=NOT_APPLICABLE)
    elif method == "distill":
        key["beta"] = NOT_APPLICABLE
    return key


@dataclass
class Cell:
    """One table cell: the values of the runs of a row, their mean and sample std."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1 in the denominator); None for a single run."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (self.n - 1))

    def format(self, digits: int = 2) -> str:
        text = f"{PERCENT * self.mean:.{digits}f}"
        return text if self.std is None else f"{text} ± {PERCENT * self.std:.{digits}f}"


@dataclass
class ComparisonRow:
    key: dict[str, str]
    cells: dict[str, Cell]        # column -> cell; a column the runs lack is absent
    run_ids: list[str]
    seeds: list[str]
    best_main: bool = False

    @property
    def n(self) -> int:
        return len(self.run_ids)

    @property
    def repeated_seeds(self) -> list[str]:
        """Seeds that more than one run of this row used: its ± then spans reruns, not seeds."""
        return sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1}, key=_seed_order)

    @property
    def label(self) -> str:
        settings = [f"{KEY_TITLES[f]}={self.key[f]}" for f in ("output", "alpha", "beta")
                    if self.key[f] != NOT_APPLICABLE]
        return self.key["method"] + (f" ({', '.join(settings)})" if settings else "")


@dataclass
class ComparisonTable:
    split: str
    columns: list[str]                 # "exit1", ..., "main", "ensemble"
    rows: list[ComparisonRow]
    skipped: list[str] = field(default_factory=list)  # run ids without the split's metrics

    @staticmethod
    def column_title(column: str) -> str:
        return f"Exit {column[4:]}" if column.startswith("exit") else column.capitalize()

    def shown_key_fields(self) -> list[str]:
        """Network and dataset only when they vary; the loss settings always (paper layout)."""
        varying = [f for f in ("arch", "dataset") if len({row.key[f] for row in self.rows}) > 1]
        return varying + ["method", "output", "alpha", "beta"]

    def cell_text(self, row: ComparisonRow, column: str) -> str:
        cell = row.cells.get(column)
        return "-" if cell is None else cell.format()

    def warnings(self) -> list[str]:
        """What a reader of the table must know: rows whose runs repeat a seed."""
        return [f"{row.label}: {row.n} runs but seed {', '.join(row.repeated_seeds)} more than once, so n counts "
                f"reruns and ± is not over seeds; pick runs with --run-id or --tag" for row in self.rows
                if row.repeated_seeds]

    def to_markdown(self) -> str:
        """Markdown table; the best main accuracy of each network/dataset in bold; warnings below."""
        fields = self.shown_key_fields()
        header = [KEY_TITLES[f] for f in fields] + ["n"] + [self.column_title(c) for c in self.columns]
        alignment = ["---"] * len(fields) + ["--:"] * (1 + len(self.columns))  # numbers right-aligned
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
        for row in self.rows:
            cells = [self.cell_text(row, c) for c in self.columns]
            if row.best_main and "main" in self.columns:
                i = self.columns.index("main")
                cells[i] = f"**{cells[i]}**"
            lines.append("| " + " | ".join([row.key[f] for f in fields] + [str(row.n)] + cells) + " |")
        warnings = self.warnings()
        if warnings:
            lines += [""] + [f"Note: {warning}." for warning in warnings]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        """One row per configuration: key fields, n, seeds, run ids, mean/std (%) per column."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*KEY_FIELDS, "n", "seeds", "run_ids", "best_main",
                             *(f"{c}_{stat}" for c in self.columns for stat in ("mean", "std"))])
            for row in self.rows:
                stats = []
                for column in self.columns:
                    cell = row.cells.get(column)
                    stats += ["", ""] if cell is None else [
                        f"{PERCENT * cell.mean:.6g}", "" if cell.std is None else f"{PERCENT * cell.std:.6g}"]
                writer.writerow([*(row.key[f] for f in KEY_FIELDS), row.n, " ".join(row.seeds),
                                 " ".join(row.run_ids), int(row.best_main), *stats])
        return path

    def rich_table(self) -> Table:
        table = Table(title=f"{self.split} accuracy (%): mean ± sample std over seeds; best main per network in red")
        fields = self.shown_key_fields()
        for f in fields:
            table.add_column(KEY_TITLES[f])
        table.add_column("n", justify="right")
        for column in self.columns:
            table.add_column(self.column_title(column), justify="right")
        for row in self.rows:
            cells = [self.cell_text(row, c) for c in self.columns]
            if row.best_main and "main" in self.columns:
                i = self.columns.index("main")
                cells[i] = f"[bold red]{cells[i]}[/]"
            table.add_row(*(row.key[f] for f in fields), str(row.n), *cells)
        return table


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.isdigit() else (1 << 62, seed)


def build_table(runs: Iterable[RunRecord], split: str = "test") -> ComparisonTable:
    """Group runs by :func:`config_key` and aggregate their ``<split>/acc_*`` metrics."""
    prefix = f"{split}/acc_"
    groups: dict[tuple[str, ...], ComparisonRow] = {}
    columns: set[str] = set()
    skipped = []
    for run in runs:
        accuracies = {name[len(prefix):]: value for name, value in run.metrics.items()
                      if name.startswith(prefix) and output_order(name[len(prefix):]) is not None}
        if "main" not in accuracies:
            skipped.append(run.run_id)  # unfinished, failed, or not a training run
            continue
        key = config_key(run)
        row = groups.setdefault(tuple(key[f] for f in KEY_FIELDS), ComparisonRow(key, {}, [], []))
        row.run_ids.append(run.run_id)
        row.seeds.append(run.params.get("seed") or run.tags.get("seed") or "?")
        for column, value in accuracies.items():
            row.cells.setdefault(column, Cell([])).values.append(float(value))
            columns.add(column)

    for row in groups.values():  # runs of a row in seed order, whatever order MLflow returned
        order = sorted(range(row.n), key=lambda i: (_seed_order(row.seeds[i]), row.run_ids[i]))
        row.run_ids, row.seeds = [row.run_ids[i] for i in order], [row.seeds[i] for i in order]
        for cell in row.cells.values():
            if len(cell.values) == row.n:
                cell.values = [cell.values[i] for i in order]

    method_rank = {m: i for i, m in enumerate(METHODS)}
    rows = sorted(groups.values(), key=lambda r: (r.key["arch"], r.key["dataset"],
                                                  method_rank.get(r.key["method"], len(METHODS)),
                                                  r.key["method"], r.key["output"], r.key["alpha"], r.key["beta"]))
    # The best main accuracy within each network/dataset, as the paper marks per network.
    best: dict[tuple[str, str], float] = {}
    for row in rows:
        group = (row.key["arch"], row.key["dataset"])
        best[group] = max(best.get(group, -math.inf), row.cells["main"].mean)
    for row in rows:
        row.best_main = row.cells["main"].mean == best[(row.key["arch"], row.key["dataset"])]
    return ComparisonTable(split, sorted(columns, key=output_order), rows, skipped)


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    """``["method=eed", "arch=resnet18"]`` -> ``{"method": "eed", "arch": "resnet18"}``."""
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tag {pair!r} must look like key=value, e.g. --tag method=eed")
        tags[key.strip()] = value.strip()
    return tags
