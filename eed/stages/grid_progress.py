"""What ``eed grid`` shows while it runs: on a terminal, a live table of the cells (state, GPU,
epoch, main accuracy on the held-out split, read from each running cell's ``last.pt`` when it
changes); elsewhere one line per cell state change."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from eed.engine.checkpoint import Checkpoint
from eed.stages.grid_plan import DONE, Cell

QUEUED, RUNNING, FINISHED, FAILED, SKIPPED = "queued", "running", "done", "failed", "skipped"


class GridProgress:
    """The state of every cell; :meth:`say` is the executors' one way to report."""

    def __init__(self, cells: Sequence[Cell], console: Console) -> None:
        self.cells, self.console = list(cells), console
        self.state = {cell.key: SKIPPED if cell.needs == DONE else QUEUED for cell in cells}
        self.where: dict[str, str] = {}
        self._seen: dict[str, tuple[float, int, float | None]] = {}  # key -> (last.pt mtime, epoch, main acc)

    def say(self, cell: Cell, what: str) -> None:
        """``what``: "running[ on GPU g]", "done" or "failed (...)"."""
        state = what.split(" ", 1)[0]
        self.state[cell.key] = state
        if state == RUNNING and " on GPU " in what:
            self.where[cell.key] = what.rsplit(" ", 1)[1]
        if not self.console.is_terminal:
            self.console.print(f"  {cell.key} {cell.label}: {what}", highlight=False)

    def _epoch(self, cell: Cell) -> tuple[int, float | None] | None:
        """Epoch and last held-out main accuracy of ``cell``'s last.pt (read again only when it changed)."""
        last = cell.folder / "train" / "checkpoints" / "last.pt"
        try:
            mtime = last.stat().st_mtime
        except FileNotFoundError:
            return None
        seen = self._seen.get(cell.key)
        if seen is None or seen[0] != mtime:
            with contextlib.suppress(Exception):  # (being written: read it at the next refresh)
                state = Checkpoint.load(last).state
                points = state.history.get("val/acc_main") or state.history.get("test/epoch_acc_main") or []
                self._seen[cell.key] = seen = (mtime, state.epoch, points[-1][1] if points else None)
        return None if seen is None else seen[1:]

    def table(self) -> Table:
        table = Table(title="eed grid", title_justify="left")
        for column in ("cell", "overrides", "state", "GPU", "epoch", "main %"):
            table.add_column(column, justify="right" if column in ("epoch", "main %") else "left")
        for cell in self.cells:
            state = self.state[cell.key]
            progress = self._epoch(cell) if state in (RUNNING, FINISHED, FAILED) else None
            epoch, accuracy = progress if progress else (0, None)  # (0: inside its first epoch)
            table.add_row(
                cell.key,
                cell.label,
                state,
                self.where.get(cell.key, ""),
                str(epoch or ""),
                "" if accuracy is None else f"{100 * accuracy:.2f}",
            )
        return table

    @contextlib.contextmanager
    def shown(self) -> Iterator[GridProgress]:
        """The live table while the block runs (on a terminal; lines otherwise), then it once more."""
        if not self.console.is_terminal:
            yield self
            return
        with Live(get_renderable=self.table, console=self.console, refresh_per_second=1, transient=True):
            yield self
        self.console.print(self.table())
