"""Progress bars for long loops that share the CPU with torch.

Rich renders a live bar from a thread of its own, 10 times a second. On a 2-core machine
that thread takes a core from torch's two OpenMP threads, and the one left waits at every
barrier: the bar cost 2-3 % of a training step (BENCHMARKS.md). The bars here have no
refresh thread; the loop renders them itself, between steps, at most every ``REFRESH_S``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

REFRESH_S = 0.5  # seconds between renders of a bar

T = TypeVar("T")


@contextlib.contextmanager
def progress_bar(console: Console, enabled: bool = True) -> Iterator[Progress | None]:
    """A transient bar (description, bar, n/total, a free ``info`` field, time left) that the
    caller refreshes with ``update(..., refresh=True)``; ``None`` when not ``enabled`` or when the
    console is no terminal (a log file or a pipe: a bar there is only blank lines)."""
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as progress:
        yield progress


class RefreshClock:
    """Says when a bar is due for its next render: ``REFRESH_S`` after the last one."""

    def __init__(self, interval: float | None = None):
        self.interval = REFRESH_S if interval is None else interval
        self.last = time.perf_counter()

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


def tracked(items: Iterable[T], progress: Progress | None, description: str, total: int) -> Iterator[T]:
    """Yield ``items`` while a task of ``progress`` counts them (none when ``progress`` is None)."""
    if progress is None:
        yield from items
        return
    task = progress.add_task(description, total=total, info="")
    progress.refresh()
    clock = RefreshClock()
    done = 0
    iterator = iter(items)
    try:
        for item in iterator:
            yield item
            done += 1
            if clock.due():
                progress.update(task, completed=done, refresh=True)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a loader left early stops its producer now, not at garbage collection
            close()
        progress.remove_task(task)
        progress.refresh()
