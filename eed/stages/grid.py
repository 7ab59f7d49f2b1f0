"""``eed grid``: a sweep over params as cells, each trained and evaluated into its own folder and
logged to one MLflow store (params' tracking.uri, ``--tracking-uri``, or with ``--server`` an
MLflow server the grid starts and stops: :mod:`eed.tracking.tracking_server`). Re-running the
same command finishes what is left and starts nothing twice (the plan: :mod:`eed.stages.grid_plan`;
the executors: :mod:`eed.stages.grid_local`, :mod:`eed.stages.grid_slurm`). Ends with the
``eed compare`` table of the grid's runs."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eed import tracking
from eed.config import Config, load_config
from eed.errors import ConfigError
from eed.paths import in_workspace
from eed.stages import stdout
from eed.stages.compare import compare
from eed.stages.grid_local import run_local, slots
from eed.stages.grid_plan import DONE, Cell, plan
from eed.stages.grid_progress import GridProgress
from eed.stages.grid_slurm import SlurmOptions, run_slurm


@dataclass
class GridResult:
    cells: list[Cell]
    started: int  # cells that needed work in this call
    failed: list[Cell]  # of those, the ones whose commands failed (their folder's grid.log says why)


EXECUTORS = ("local", "slurm")


def grid(
    params: Path | None,
    overrides: Sequence[str],
    sweeps: Sequence[str],
    *,
    out: Path | None = None,
    executor: str = "local",
    jobs: int = 1,
    gpus: Sequence[str] = (),
    per_gpu: int = 1,
    slurm: SlurmOptions | None = None,
    tracking_uri: str | None = None,
    server: bool = False,
    server_host: str | None = None,
) -> GridResult:
    """Plan the grid, finish every cell that needs it, showing their progress (:class:`GridProgress`),
    then the comparison of the grid's runs. ``local``: ``jobs`` at a time, or ``per_gpu`` per GPU of
    ``gpus``; ``slurm``: one job array (``slurm``: its options). The store: ``tracking_uri``, else
    params' ``tracking.uri``; or, with ``server``, an MLflow server of the grid's own over
    ``<out>/tracking`` on ``server_host`` (default: this machine's name for Slurm, else loopback)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if jobs < 1 or per_gpu < 1:
        raise ConfigError(f"--jobs {jobs} / --per-gpu {per_gpu}: each must be at least 1")
    if server and tracking_uri:
        raise ConfigError("--server and --tracking-uri: the grid tracks into its own server or into yours, not both")
    base = load_config(params, list(overrides))
    out = Path(out or in_workspace(base.paths.out_dir) / "grid").resolve()
    console = stdout()
    if not server:
        tracking_uri = tracking_uri or tracking.resolve_tracking_uri(base)
        tracking.check_tracking_uri(tracking_uri)
        return _finish(
            base,
            params,
            overrides,
            sweeps,
            out,
            tracking_uri,
            executor=executor,
            places=slots(jobs, list(gpus), per_gpu),
            slurm=slurm or SlurmOptions(),
        )
    store = out / "tracking"
    host = server_host or (socket.getfqdn() if executor == "slurm" else "127.0.0.1")
    with tracking.tracking_server(store, host) as server_uri:
        console.print(f"grid: its own MLflow server at {server_uri}, over {store}", highlight=False)
        result = _finish(
            base,
            params,
            overrides,
            sweeps,
            out,
            server_uri,
            executor=executor,
            places=slots(jobs, list(gpus), per_gpu),
            slurm=slurm or SlurmOptions(),
        )
    console.print(
        f"grid: server stopped; its runs stay in {store}. To browse them: {tracking.server_command(store)}",
        highlight=False,
        soft_wrap=True,
    )
    return result


def _finish(
    base: Config,
    params: Path | None,
    overrides: Sequence[str],
    sweeps: Sequence[str],
    out: Path,
    tracking_uri: str,
    *,
    executor: str,
    places: list[str | None],
    slurm: SlurmOptions,
) -> GridResult:
    """Plan, run what needs running, plan again and compare the grid's runs."""
    console = stdout()
    cells = plan(params, overrides, sweeps, out, tracking_uri)
    waiting = [cell for cell in cells if cell.needs != DONE]
    console.print(
        f"grid: {len(cells)} cells, {len(cells) - len(waiting)} done in {tracking_uri}, "
        f"{len(waiting)} to run, in {out}",
        highlight=False,
    )

    progress = GridProgress(cells, console)
    with progress.shown():
        if executor == "slurm":
            codes = run_slurm(
                waiting, params, overrides, tracking_uri, folder=out / "slurm", options=slurm, say=progress.say
            )
        else:
            codes = run_local(waiting, params, overrides, tracking_uri, places=places, say=progress.say)
    failed = [cell for cell in waiting if codes.get(cell.key, 0) != 0]
    cells = plan(params, overrides, sweeps, out, tracking_uri)
    run_ids = [cell.run_id for cell in cells if cell.run_id]
    if run_ids:
        compare(base, run_ids=run_ids, out=out / "compare", tracking_uri=tracking_uri)
    return GridResult(cells, len(waiting), failed)
