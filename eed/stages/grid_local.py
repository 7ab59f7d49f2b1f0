"""The ``local`` executor of ``eed grid``: the cells as concurrent processes on this machine, each
pinned to a GPU slot when there are GPUs (``CUDA_VISIBLE_DEVICES``, ``per_gpu`` cells per GPU)."""

from __future__ import annotations

import os
import queue
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from eed.stages.grid_plan import Cell, cell_commands, tag_run

GPU_TAG = "eed.grid.cuda_visible_devices"  # the GPU slot a cell trained on (tag of its run)


def slots(jobs: int, gpus: Sequence[str], per_gpu: int) -> list[str | None]:
    """Where cells may run at once: ``per_gpu`` slots per GPU (round-robin over the GPUs), or
    ``jobs`` slots without GPUs."""
    if gpus:
        return [gpu for _ in range(per_gpu) for gpu in gpus]
    return [None] * jobs


def run_local(
    cells: Sequence[Cell],
    params: Path | None,
    base_overrides: Sequence[str],
    tracking_uri: str,
    *,
    places: Sequence[str | None],
    say: Callable[[Cell, str], None],
) -> dict[str, int]:
    """Finish every cell that needs work, at most one per place at a time; returns each cell's
    exit code (0: done). A cell's commands print into ``<cell folder>/grid.log``."""
    free: queue.Queue[str | None] = queue.Queue()
    for place in places:
        free.put(place)

    def finish(cell: Cell) -> int:
        place = free.get()
        try:
            return _run_cell(cell, params, base_overrides, tracking_uri, place, say)
        finally:
            free.put(place)

    todo = [cell for cell in cells if cell_commands(cell, params, base_overrides, tracking_uri)]
    with ThreadPoolExecutor(max_workers=max(1, len(places))) as pool:
        codes = dict(zip([cell.key for cell in todo], pool.map(finish, todo)))
    return codes


def _run_cell(
    cell: Cell,
    params: Path | None,
    base_overrides: Sequence[str],
    tracking_uri: str,
    place: str | None,
    say: Callable[[Cell, str], None],
) -> int:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
    }  # (else a user's variable would win over the grid's store)
    if place is not None:
        env["CUDA_VISIBLE_DEVICES"] = place
    cell.folder.mkdir(parents=True, exist_ok=True)
    say(cell, "running" + (f" on GPU {place}" if place is not None else ""))
    with open(cell.folder / "grid.log", "a") as log:
        for command in cell_commands(cell, params, base_overrides, tracking_uri):
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if command[3] == "train":
                tag_run(cell, tracking_uri, {GPU_TAG: "" if place is None else place})
            if code != 0:
                say(cell, f"failed (exit {code}; {cell.folder / 'grid.log'})")
                return code
    say(cell, "done")
    return 0
