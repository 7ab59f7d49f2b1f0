"""SIGTERM/SIGINT during training: finish the current step, checkpoint, then stop."""

from __future__ import annotations

import signal
from typing import Any

from rich.console import Console


class GracefulStop:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step; a second signal
    stops at once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum
        self.console.print(f"[yellow]{signal.Signals(signum).name}: finishing the current step, then checkpointing…")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        return self.signal is not None
