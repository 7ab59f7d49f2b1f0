"""The ``slurm`` executor of ``eed grid``, through submitit: one job array, one task per cell.

A task runs the cell's commands (:func:`eed.stages.grid_plan.cell_commands`) on its node. It is
:class:`submitit.helpers.Checkpointable`: when Slurm times it out or pre-empts it, submitit
requeues it and the cell resumes from its ``last.pt`` into the same MLflow run. A task cancelled
or lost otherwise is finished by running the grid again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit

from eed.stages.grid_plan import Cell, cell_commands, tag_run
from eed.stages.grid_task import CellTask

JOB_TAG = "eed.grid.slurm_job"  # the Slurm job (array task) that trained a cell


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60 * 24
    account: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 1
    poll_s: float = 5.0


def run_slurm(
    cells: Sequence[Cell],
    params: Path | None,
    base_overrides: Sequence[str],
    tracking_uri: str,
    *,
    folder: Path,
    options: SlurmOptions,
    say: Callable[[Cell, str], None],
) -> dict[str, int]:
    """Submit every cell that needs work as one job array and wait for it; returns each cell's exit
    code (0: done; -1: the task ended without finishing, e.g. cancelled)."""
    todo = [cell for cell in cells if cell_commands(cell, params, base_overrides, tracking_uri)]
    if not todo:
        return {}
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    parameters = {
        "job_name": "eed-grid",
        "time": options.time_min,
        "cpus_per_task": options.cpus_per_run,
        "ntasks_per_node": 1,
        "nodes": 1,
        "array_parallelism": len(todo),
    }
    optional = {
        "partition": options.partition,
        "account": options.account,
        "gpus_per_node": options.gpus_per_run or None,
    }
    executor.update_parameters(**parameters, **{key: value for key, value in optional.items() if value is not None})
    for cell in todo:
        cell.folder.mkdir(parents=True, exist_ok=True)
    with executor.batch():
        jobs = [
            executor.submit(
                CellTask(
                    cell_commands(cell, params, base_overrides, tracking_uri), cell.folder / "grid.log", tracking_uri
                )
            )
            for cell in todo
        ]
    codes: dict[str, int] = {}
    running: set[str] = set()
    while len(codes) < len(todo):
        states = _queue_states([job.job_id for job in jobs])
        for cell, job in zip(todo, jobs):
            if cell.key in codes:
                continue
            if job.paths.result_pickle.exists():
                outcome, value = _result(job)
                # A CellTask returns its exit code (an int); an error's value is its traceback.
                codes[cell.key] = value if outcome == "success" and isinstance(value, int) else -1
                what = (
                    "done" if codes[cell.key] == 0 else f"failed (exit {codes[cell.key]}; {cell.folder / 'grid.log'})"
                )
            elif states is not None and job.job_id not in states:
                codes[cell.key] = -1
                what = f"failed (Slurm job {job.job_id} ended without a result: cancelled or lost; its log: {job.paths.stderr})"
            else:
                if states and states.get(job.job_id) == "RUNNING" and cell.key not in running:
                    running.add(cell.key)
                    say(cell, f"running (Slurm job {job.job_id})")
                continue
            tag_run(cell, tracking_uri, {JOB_TAG: str(job.job_id)})
            say(cell, what)
        if len(codes) < len(todo):
            time.sleep(options.poll_s)
    return codes


def _result(job: submitit.Job) -> tuple[str, object]:
    """("success", the task's return value) or ("error", its traceback), as submitit pickled them."""
    from submitit.core import utils

    outcome, value = utils.pickle_load(job.paths.result_pickle)
    return outcome, value


def _queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{job id: state}`` of the tasks Slurm still holds (pending, running, requeued), from squeue,
    not sacct as submitit asks: a cluster without accounting has no sacct, and a task killed before
    it wrote its result would be waited for forever. None when squeue failed (ask again later)."""
    listed = subprocess.run(
        ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True, text=True
    )
    if listed.returncode != 0:
        return None
    return dict(line.split(" ", 1) for line in listed.stdout.splitlines() if " " in line)
