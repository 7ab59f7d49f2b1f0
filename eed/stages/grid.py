"""``eed grid``: a sweep over params as cells, each trained and evaluated into its own folder and
logged to one MLflow store; re-running the same command finishes what is left and starts nothing
twice (the plan: :mod:`eed.stages.grid_plan`; the executor: :mod:`eed.stages.grid_local`). Ends
with the ``eed compare`` table of the grid's runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eed import tracking
from eed.config import load_config
from eed.errors import ConfigError
from eed.paths import in_workspace
from eed.stages import stdout
from eed.stages.compare import compare
from eed.stages.grid_local import run_local, slots
from eed.stages.grid_progress import GridProgress
from eed.stages.grid_slurm import SlurmOptions, run_slurm
from eed.stages.grid_plan import DONE, Cell, plan


@dataclass
class GridResult:
    cells: list[Cell]
    started: int         # cells that needed work in this call
    failed: list[Cell]   # of those, the ones whose commands failed (their folder's grid.log says why)


EXECUTORS = ("local", "slurm")


def grid(params: Path | None, overrides: Sequence[str], sweeps: Sequence[str], *, out: Path | None = None,
         executor: str = "local", jobs: int = 1, gpus: Sequence[str] = (), per_gpu: int = 1,
         slurm: SlurmOptions | None = None) -> GridResult:
    """Plan the grid, finish every cell that needs it, showing their progress (:class:`GridProgress`),
    then the comparison of the grid's runs. ``local``: ``jobs`` at a time, or ``per_gpu`` per GPU of
    ``gpus``; ``slurm``: one job array (``slurm``: its options)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if jobs < 1 or per_gpu < 1:
        raise ConfigError(f"--jobs {jobs} / --per-gpu {per_gpu}: each must be at least 1")
    base = load_config(params, list(overrides))
    tracking_uri = tracking.resolve_tracking_uri(base)
    tracking.check_tracking_uri(tracking_uri)
    out = Path(out or in_workspace(base.paths.out_dir) / "grid").resolve()
    console = stdout()
    cells = plan(params, overrides, sweeps, out, tracking_uri)
    waiting = [cell for cell in cells if cell.needs != DONE]
    console.print(f"grid: {len(cells)} cells, {len(cells) - len(waiting)} done in {tracking_uri}, "
                  f"{len(waiting)} to run, in {out}", highlight=False)

    progress = GridProgress(cells, console)
    with progress.shown():
        if executor == "slurm":
            codes = run_slurm(waiting, params, overrides, tracking_uri, folder=out / "slurm",
                              options=slurm or SlurmOptions(), say=progress.say)
        else:
            codes = run_local(waiting, params, overrides, tracking_uri, places=slots(jobs, list(gpus), per_gpu),
                              say=progress.say)
    failed = [cell for cell in waiting if codes.get(cell.key, 0) != 0]
    cells = plan(params, overrides, sweeps, out, tracking_uri)
    run_ids = [cell.run_id for cell in cells if cell.run_id]
    if run_ids:
        compare(base, run_ids=run_ids, out=out / "compare")
    return GridResult(cells, len(waiting), failed)
