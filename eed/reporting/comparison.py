"""The paper's Tables I/II from tracked training runs (``eed compare``).

Runs (:class:`eed.tracking.RunRecord`, selected by experiment, tag or id) are grouped by
configuration: every logged param that can change the trained weights or the metrics
(:func:`eed.config.is_training_key`; :data:`eed.config.NON_TRAINING_KEYS` lists the few that
cannot, each with why) except the seed. Runs that share a configuration (different seeds)
become one row whose cells are ``mean ± std`` over the runs (sample standard deviation, n
shown); a row with one run shows just the value. The
columns are exit 1..k-1, main and the ensemble of all classifiers, read from the metrics of
:data:`TABLE_SPLITS`: the final ``test/acc_*`` (the weights selected on validation),
``val/acc_*`` (the last logged epoch) or ``test/max_acc_*`` (each output's maximum over the
epochs, as the paper reports it: selected on test, optimistic); the table's title says which.
Settings that vary across the table are columns; those shared by every row are shown once
above it. Within each training setup (all settings but the method and its
loss) the best mean main accuracy is marked, as the paper marks it in red.

Settings a run's training never reads (:func:`ignored_settings`) are shown as "—" and do
not split rows: baseline and branchynet train with cross entropy only, distill ignores
beta, only eed takes a teacher ensemble, and so on.

Only runs that ended FINISHED enter a mean: a killed, failed or still running run is listed
apart (:attr:`ComparisonTable.excluded`), whatever metrics it logged before it stopped.

Metrics are logged as fractions; tables and the figure show percent.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from eed.config import is_training_key
from eed.errors import ConfigError
from eed.methods import get_method, method_names
from eed.models.multi_exit import output_order, output_position

if TYPE_CHECKING:
    from eed.tracking import RunRecord

# Params the trainer also writes as tags, for runs logged without the param.
TAG_FALLBACK = {"method": "method", "model.arch": "arch", "data.dataset": "dataset", "scale": "scale"}
# Settings shown first, in the paper's order and with its names; any other by its params.yaml name.
TITLES = {
    "model.arch": "Network",
    "data.dataset": "Dataset",
    "scale": "Scale",
    "method": "Method",
    "loss.output": "l_z",
    "loss.alpha": "α",
    "loss.beta": "β",
    "loss.temperature": "T",
    "loss.teacher": "Teacher",
}
NOT_APPLICABLE = "—"
MISSING = "?"  # a setting other runs of the table recorded and this one did not
PERCENT = 100.0
STATUS_FINISHED = "FINISHED"

# --split: the metrics a table reads, and what its title says they are.
TABLE_SPLITS: dict[str, tuple[str, str]] = {
    "test": ("test/acc_", "test accuracy of best.pt (selected on validation; last epoch without one)"),
    "val": ("val/acc_", "validation accuracy, last epoch"),
    "test_max": ("test/max_acc_", "test accuracy, max over epochs, as in the paper; selected on test, optimistic"),
}


# --------------------------------------------------------------------------- grouping


def is_grouped(param: str) -> bool:
    """Whether runs that differ in ``param`` belong to different rows: every training setting but the
    seed, which a row's mean and std are over. A param the config does not know counts as a setting."""
    return param != "seed" and is_training_key(param)


def title(setting: str) -> str:
    """How a setting is named in a table: the paper's name, else its params.yaml key."""
    return TITLES.get(setting, setting)


def _canonical(text: str) -> str:
    """``"1.0"`` and ``"1"`` are the same alpha: numbers compare by value, other text as logged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def run_settings(run: RunRecord) -> dict[str, str]:
    """The run's grouping params (canonical text), with the trainer's tags for params it lacks."""
    found = {name: _canonical(value) for name, value in run.params.items() if is_grouped(name)}
    for name, tag in TAG_FALLBACK.items():
        if name not in found and tag in run.tags:
            found[name] = _canonical(run.tags[tag])
    return found


def ignored_settings(key: dict[str, str]) -> set[str]:
    """The settings of ``key`` that the run's training never read."""
    ignored = set()
    method = key.get("method")
    if method in method_names():  # the loss keys its row of the methods table does not read
        read = {f"loss.{name}" for name in get_method(method).loss_keys}
        ignored |= {name for name in key if name.startswith("loss.") and name not in read}
    if key.get("loss.output") != "kl":  # T only softens the probabilities of the KL loss
        ignored.add("loss.temperature")
    if key.get("train.schedule") != "step":
        ignored |= {"train.milestones", "train.gamma"}
    if key.get("data.dataset") != "imagenet":  # only ImageNet is stored as JPEG
        ignored |= {"data.max_resolution", "data.jpeg_quality"}
    if key.get("data.dataset") != "synthetic":
        ignored |= {name for name in key if name.startswith("data.synthetic.")}
    return ignored & key.keys()


def config_key(run: RunRecord, names: Sequence[str]) -> dict[str, str]:
    """The run's value of each setting in ``names``: "—" where its training ignores it, "?" where
    it did not record it."""
    found = run_settings(run)
    key = {name: found.get(name, MISSING) for name in names}
    if key.get("loss.teacher") == "null":  # no teacher subset: the ensemble of all classifiers
        key["loss.teacher"] = "all"
    key.update(dict.fromkeys(ignored_settings(key), NOT_APPLICABLE))
    return key


def _display_order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda name: (list(TITLES).index(name) if name in TITLES else len(TITLES), name))


def is_setup(name: str) -> bool:
    """Part of the training setup the methods are compared under (not the method or its loss)."""
    return name != "method" and not name.startswith("loss.")


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
    key: dict[str, str]  # setting -> value, every setting of the table
    cells: dict[str, Cell]  # column -> cell; a column the runs lack is absent
    run_ids: list[str]
    seeds: list[str]
    best_main: bool = False
    label: str = ""  # the method and its values of the table's varying settings
    accuracies: list[dict[str, float]] = field(default_factory=list)  # per run (as run_ids): column -> value

    @property
    def n(self) -> int:
        return len(self.run_ids)

    def by_seed(self, column: str) -> dict[str, float]:
        """``{seed: accuracy}`` of ``column`` (the mean of a seed's reruns, if any), in seed order."""
        values: dict[str, list[float]] = {}
        for seed, accuracies in zip(self.seeds, self.accuracies):
            if column in accuracies:
                values.setdefault(seed, []).append(accuracies[column])
        return {seed: math.fsum(found) / len(found) for seed, found in values.items()}

    @property
    def repeated_seeds(self) -> list[str]:
        """Seeds that more than one run of this row used: its ± then spans reruns, not seeds."""
        return sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1}, key=_seed_order)


@dataclass
class ComparisonTable:
    split: str
    columns: list[str]  # "exit1", ..., "main", "ensemble"
    rows: list[ComparisonRow]
    settings: list[str] = field(default_factory=list)  # every grouping setting, in display order
    skipped: list[str] = field(default_factory=list)  # run ids without the split's metrics
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (run id, status) of runs not FINISHED

    @property
    def meaning(self) -> str:
        """What the numbers are, e.g. "test accuracy, max over epochs, as in the paper; ..."."""
        return TABLE_SPLITS[self.split][1]

    @staticmethod
    def column_title(column: str) -> str:
        return f"Exit {column[4:]}" if column.startswith("exit") else column.capitalize()

    @property
    def varying(self) -> list[str]:
        """Settings shown as columns: those that differ between rows, and the method, which names a row."""
        return [name for name in self.settings if name == "method" or len({row.key[name] for row in self.rows}) > 1]

    @property
    def constant(self) -> dict[str, str]:
        """Settings every row shares, shown once above the table; one that no row uses ("—") says nothing."""
        varying = self.varying
        return {
            name: self.rows[0].key[name]
            for name in self.settings
            if name not in varying and self.rows[0].key[name] != NOT_APPLICABLE
        }

    def constant_line(self) -> str:
        return "Common to all rows: " + ", ".join(f"{title(name)}={value}" for name, value in self.constant.items())

    def cell_text(self, row: ComparisonRow, column: str) -> str:
        cell = row.cells.get(column)
        return "-" if cell is None else cell.format()

    def warnings(self) -> list[str]:
        """What a reader of the table must know: rows whose runs repeat a seed, runs left out unfinished."""
        notes = [
            f"{row.label}: {row.n} runs but seed {', '.join(row.repeated_seeds)} more than once, so n counts "
            f"reruns and ± is not over seeds; pick runs with --run-id or --tag"
            for row in self.rows
            if row.repeated_seeds
        ]
        if self.excluded:
            by_status: dict[str, list[str]] = {}
            for run_id, status in self.excluded:
                by_status.setdefault(status, []).append(run_id)
            listed = "; ".join(f"{status}: {', '.join(ids)}" for status, ids in sorted(by_status.items()))
            notes.append(f"left out {len(self.excluded)} runs that did not finish ({listed})")
        return notes

    def _cells(self, row: ComparisonRow, mark: str) -> list[str]:
        """The row's accuracy cells, a best main one formatted through ``mark``."""
        cells = [self.cell_text(row, c) for c in self.columns]
        if row.best_main and "main" in self.columns:
            i = self.columns.index("main")
            cells[i] = mark.format(cells[i])
        return cells

    def to_markdown(self) -> str:
        """The shared settings, then the table (the best main accuracy of each setup in bold), then notes."""
        varying = self.varying
        header = [title(name) for name in varying] + ["n"] + [self.column_title(c) for c in self.columns]
        alignment = ["---"] * len(varying) + ["--:"] * (1 + len(self.columns))  # numbers right-aligned
        lines = [f"{self.meaning[0].upper()}{self.meaning[1:]}, %.", ""]
        lines += [self.constant_line(), ""] if self.constant else []
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
        for row in self.rows:
            values = [row.key[name] for name in varying] + [str(row.n)] + self._cells(row, "**{}**")
            lines.append("| " + " | ".join(values) + " |")
        warnings = self.warnings()
        if warnings:
            lines += [""] + [f"Note: {warning}." for warning in warnings]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        """One row per configuration: every setting, n, seeds, run ids, mean/std (%) per column."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    *self.settings,
                    "n",
                    "seeds",
                    "run_ids",
                    "best_main",
                    *(f"{c}_{stat}" for c in self.columns for stat in ("mean", "std")),
                ]
            )
            for row in self.rows:
                stats = []
                for column in self.columns:
                    cell = row.cells.get(column)
                    stats += (
                        ["", ""]
                        if cell is None
                        else [f"{PERCENT * cell.mean:.6g}", "" if cell.std is None else f"{PERCENT * cell.std:.6g}"]
                    )
                writer.writerow(
                    [
                        *(row.key[name] for name in self.settings),
                        row.n,
                        " ".join(row.seeds),
                        " ".join(row.run_ids),
                        int(row.best_main),
                        *stats,
                    ]
                )
        return path

    @staticmethod
    def short_title(column: str) -> str:
        return f"E{column[4:]}" if column.startswith("exit") else {"ensemble": "Ens"}.get(column, column.capitalize())

    def legend(self) -> str:
        """What the console table's marks and short titles mean."""
        exits = [column[4:] for column in self.columns if column.startswith("exit")]
        names = (
            [f"E{exits[0]}–E{exits[-1]}: exits {exits[0]}–{exits[-1]}" if len(exits) > 1 else "E1: exit 1"]
            if exits
            else []
        )
        names += ["Ens: the ensemble of every classifier"] if "ensemble" in self.columns else []
        return "; ".join(
            [
                "Each cell: the mean over the row's runs, their sample std (±) below it",
                "* (bold): the best main of its setup",
                *names,
            ]
        )

    def _stacked(self, row: ComparisonRow, column: str) -> str:
        cell = row.cells.get(column)
        if cell is None:
            return "-"
        mean = f"{PERCENT * cell.mean:.2f}" + ("*" if row.best_main and column == "main" else "")
        return mean if cell.std is None else f"{mean}\n±{PERCENT * cell.std:.2f}"

    def rich_table(self) -> Table:
        """The console's table, made to be read at 80 columns: each cell's mean over its ± std (two
        lines), short column titles (the legend in the caption), setting values folded rather than cut,
        the best main marked by a * as well as bold red (not by colour alone). The shared settings are
        printed apart (:meth:`constant_line`), as a wrapped paragraph."""
        table = Table(
            title=f"{self.meaning[0].upper()}{self.meaning[1:]}, %",
            caption=self.legend(),
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            title_justify="left",
            caption_justify="left",
        )
        for name in self.varying:
            table.add_column(title(name), overflow="fold")
        table.add_column("n", justify="right")
        for column in self.columns:
            table.add_column(self.short_title(column), justify="right", no_wrap=True)
        for row in self.rows:  # Text, not markup: a setting such as "[1, 3, 'main']" is shown as it is
            cells = [
                Text(self._stacked(row, column), style="bold red" if row.best_main and column == "main" else "")
                for column in self.columns
            ]
            table.add_row(*(Text(row.key[name]) for name in self.varying), str(row.n), *cells, end_section=True)
        return table


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.isdigit() else (1 << 62, seed)


def _value_order(value: str) -> tuple[int, float, str]:
    """Numbers by value (2 before 10), then text."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def build_table(runs: Iterable[RunRecord], split: str = "test") -> ComparisonTable:
    """Group the FINISHED runs by :func:`config_key` and aggregate the metrics ``split`` names
    (:data:`TABLE_SPLITS`)."""
    if split not in TABLE_SPLITS:
        raise ConfigError(f"--split: unknown split {split!r}; allowed: {', '.join(TABLE_SPLITS)}")
    prefix = TABLE_SPLITS[split][0]
    measured: list[tuple[RunRecord, dict[str, float]]] = []
    skipped, excluded = [], []
    for run in runs:
        accuracies = {
            name[len(prefix) :]: value
            for name, value in run.metrics.items()
            if name.startswith(prefix) and output_order(name[len(prefix) :]) is not None
        }
        if "main" not in accuracies:
            skipped.append(run.run_id)  # unfinished, failed, or not a training run
        elif run.status != STATUS_FINISHED:
            excluded.append((run.run_id, run.status))  # its metrics are those of a training cut short or still going
        else:
            measured.append((run, accuracies))

    names = _display_order({name for run, _ in measured for name in run_settings(run)})
    groups: dict[tuple[str, ...], ComparisonRow] = {}
    columns: set[str] = set()
    for run, accuracies in measured:
        key = config_key(run, names)
        row = groups.setdefault(tuple(key.values()), ComparisonRow(key, {}, [], []))
        row.run_ids.append(run.run_id)
        row.seeds.append(run.params.get("seed") or run.tags.get("seed") or MISSING)
        row.accuracies.append({column: float(value) for column, value in accuracies.items()})
        for column, value in accuracies.items():
            row.cells.setdefault(column, Cell([])).values.append(float(value))
            columns.add(column)

    for row in groups.values():  # runs of a row in seed order, whatever order MLflow returned
        order = sorted(range(row.n), key=lambda i: (_seed_order(row.seeds[i]), row.run_ids[i]))
        row.run_ids, row.seeds = [row.run_ids[i] for i in order], [row.seeds[i] for i in order]
        row.accuracies = [row.accuracies[i] for i in order]
        for cell in row.cells.values():
            if len(cell.values) == row.n:
                cell.values = [cell.values[i] for i in order]

    setup = [name for name in names if is_setup(name)]
    loss = [name for name in names if name.startswith("loss.")]
    methods = method_names()
    method_rank = {m: i for i, m in enumerate(methods)}

    def position(row: ComparisonRow) -> tuple:  # by setup, then as the paper orders methods
        method = row.key.get("method", MISSING)
        return (
            *(_value_order(row.key[name]) for name in setup),
            method_rank.get(method, len(methods)),
            method,
            *(_value_order(row.key[name]) for name in loss),
        )

    rows = sorted(groups.values(), key=position)
    # The best main accuracy within each training setup, as the paper marks it per network.
    best: dict[tuple[str, ...], float] = {}
    for row in rows:
        group = tuple(row.key[name] for name in setup)
        best[group] = max(best.get(group, -math.inf), row.cells["main"].mean)
    for row in rows:
        row.best_main = row.cells["main"].mean == best[tuple(row.key[name] for name in setup)]
    table = ComparisonTable(
        split, sorted(columns, key=output_position), rows, settings=names, skipped=skipped, excluded=excluded
    )
    shown = [name for name in table.varying if name != "method"]
    for row in rows:
        applied = [f"{title(name)}={row.key[name]}" for name in shown if row.key[name] != NOT_APPLICABLE]
        row.label = row.key.get("method", MISSING) + (f" ({', '.join(applied)})" if applied else "")
    return table


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    """``["method=eed", "arch=resnet18"]`` -> ``{"method": "eed", "arch": "resnet18"}``."""
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tag {pair!r} must look like key=value, e.g. --tag method=eed")
        tags[key.strip()] = value.strip()
    return tags
