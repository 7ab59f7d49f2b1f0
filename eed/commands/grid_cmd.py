"""`eed grid`: parse, call :func:`eed.stages.grid.grid`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import OverridesOption, ParamsOption, params_file
from eed.errors import guarded


@guarded
def grid(
    sweep: Annotated[
        list[str],
        typer.Option(
            "--sweep",
            "-S",
            metavar="KEY=V1,V2",
            help="A swept key and its values, DVC's syntax, e.g. -S method=eed,branchynet "
            "-S seed=0,1,2 (repeatable: the grid is their product).",
        ),
    ],
    executor: Annotated[
        str,
        typer.Option(
            metavar="local|slurm",
            help="local: processes on this machine; slurm: one Slurm job array (submitit), from a login node.",
        ),
    ] = "local",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Cells at once on this machine (without --gpus).")] = 1,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            metavar="0,1,...",
            help="GPU ids to pin cells to (CUDA_VISIBLE_DEVICES, round-robin); --per-gpu cells share each.",
        ),
    ] = None,
    per_gpu: Annotated[int, typer.Option("--per-gpu", help="Cells at once on each GPU of --gpus.")] = 1,
    partition: Annotated[str | None, typer.Option(help="slurm: the partition (default: the cluster's).")] = None,
    time: Annotated[
        int,
        typer.Option(
            "--time", metavar="MINUTES", help="slurm: a task's time limit; one that hits it is requeued and resumes."
        ),
    ] = 1440,
    account: Annotated[str | None, typer.Option(help="slurm: the account to charge.")] = None,
    gpus_per_run: Annotated[int, typer.Option(help="slurm: GPUs per cell (train.nproc > 1 runs DDP on them).")] = 0,
    cpus_per_run: Annotated[int, typer.Option(help="slurm: CPUs per cell.")] = 1,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="The MLflow store of every cell (e.g. http://tracking.lab:5000); default: params' tracking.uri."
        ),
    ] = None,
    server: Annotated[
        bool,
        typer.Option(
            "--server",
            help="Start an MLflow server of the grid's own over <out>/tracking (sqlite and artifacts: put "
            "--out on a shared folder for Slurm), stop it at the end; the runs stay there.",
        ),
    ] = False,
    server_host: Annotated[
        str | None,
        typer.Option(
            help="--server: the name cells reach it by (default: this machine's name for slurm, else 127.0.0.1)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder of the cells, one per training setting (default: <paths.out_dir>/grid)."),
    ] = None,
    params: ParamsOption = None,
    set_: OverridesOption = None,
) -> None:
    """Train and evaluate every combination of the sweeps, each into its own folder and all into one
    MLflow store; then the eed compare table of the grid.

    A cell whose training run is FINISHED in the store (found by a hash of its training settings,
    not by name) is not run again; an interrupted one resumes from its last.pt into the same run.
    Run the same command again after any interruption: it finishes what is left.
    """
    from eed.stages import grid as stage
    from eed.stages.grid_slurm import SlurmOptions

    result = stage.grid(
        params_file(params),
        set_ or [],
        sweep,
        out=out,
        executor=executor,
        jobs=jobs,
        gpus=[g.strip() for g in gpus.split(",") if g.strip()] if gpus else [],
        per_gpu=per_gpu,
        slurm=SlurmOptions(partition, time, account, gpus_per_run, cpus_per_run),
        tracking_uri=tracking_uri,
        server=server,
        server_host=server_host,
    )
    if result.failed:
        raise typer.Exit(1)
