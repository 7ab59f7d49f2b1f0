"""`eed rdm`: parse, call :func:`eed.rdm.run_rdm`, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from eed.commands.common import OverridesOption, ParamsOption, fail, load


def rdm(
    source: Annotated[str, typer.Argument(
        help="A checkpoint file or the MLflow run id of a training run.")],
    params: ParamsOption = Path("params.yaml"),
    set_: OverridesOption = None,
    split: Annotated[str, typer.Option(help="Split the samples are drawn from: test | val.")] = "test",
    classifier: Annotated[Optional[list[str]], typer.Option(
        "--classifier", "-c",
        help="Also the RDMs of this exit's F_i/Z_i, e.g. --classifier exit1 (repeatable); "
             "the main output's F_k/Z_k are always included.")] = None,
    seed: Annotated[int, typer.Option(
        help="Seed of the sample and the zoomed classes; keep it fixed to compare runs.")] = 0,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder for rdm.json and figures/rdm.png (default: <paths.out_dir>/rdm).")] = None,
    checkpoint: Annotated[str, typer.Option(help="With a run id: best | last.")] = "best",
    log: Annotated[bool, typer.Option(
        "--log/--no-log", help="Log the results as a child run 'rdm' of the checkpoint's MLflow run.")] = True,
) -> None:
    """Representational dissimilarity matrices of a trained network (paper Fig. 4).

    1 - Pearson r between the activations of eval.rdm_samples seeded samples sorted by class,
    before (F) and after (Z) the main fully connected layer, for all samples and for
    eval.rdm_classes seeded classes; rdm.json holds the within-class and between-class means
    and their ratio, so runs compare by number.
    """
    from eed.checkpoint import CheckpointError
    from eed.data.errors import DataError
    from eed.evaluation import EvaluationError
    from eed.rdm import run_rdm
    from eed.tracking import TrackingError

    config = load(params, set_)
    if split not in ("test", "val"):
        fail(f"--split must be test or val, got {split!r}")
    classifiers = ["main", *[c for c in (classifier or []) if c != "main"]]
    out_dir = out or Path(config.paths.out_dir) / "rdm"
    try:
        run = run_rdm(source, config, out_dir, split=split, classifiers=classifiers, seed=seed,
                      log=log and config.tracking.enabled, which=checkpoint)
    except (CheckpointError, DataError, EvaluationError, TrackingError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    table = Table(title=f"RDMs of {len(run.result.labels)} {split} samples (1 - Pearson r)",
                  caption="ratio = between / within: higher = more class-specific representations")
    for column in ("layer", "samples", "within", "between", "ratio"):
        table.add_column(column, justify="left" if column in ("layer", "samples") else "right")
    for scope, summaries in (("all", run.result.summaries), ("subset", run.result.subset_summaries)):
        for layer, summary in summaries.items():
            table.add_row(layer, scope, *("—" if v is None else f"{v:.4f}"
                                          for v in (summary.within, summary.between, summary.ratio)))
    console = Console()
    console.print(table)
    console.print(f"Wrote {', '.join(str(f) for f in run.files)}")
    if run.mlflow_run_id:
        console.print(f"MLflow run: {run.mlflow_run_id}")
