"""`eed rdm`: parse, call :func:`eed.stages.rdm.rdm`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eed.commands.common import Checkpoint, OverridesOption, ParamsOption, Split, load
from eed.errors import guarded


@guarded
def rdm(
    source: Annotated[str, typer.Argument(help="A checkpoint file or the MLflow run id of a training run.")],
    params: ParamsOption = None,
    set_: OverridesOption = None,
    split: Annotated[Split, typer.Option(help="Split the samples are drawn from.")] = Split.test,
    classifier: Annotated[
        list[str] | None,
        typer.Option(
            "--classifier",
            "-c",
            metavar="EXIT",
            help="Also the RDMs of this exit's F_i/Z_i, e.g. --classifier exit1 (repeatable); "
            "the main output's F_k/Z_k are always included.",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the sample and the zoomed classes; keep it fixed to compare runs.")
    ] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder for rdm.json and figures/rdm.png (default: <paths.out_dir>/rdm)."),
    ] = None,
    checkpoint: Annotated[
        Checkpoint, typer.Option(help="With a run id: which checkpoint to download.")
    ] = Checkpoint.best,
    log: Annotated[
        bool,
        typer.Option("--log/--no-log", help="Log the results as a child run 'rdm' of the checkpoint's MLflow run."),
    ] = True,
) -> None:
    """Representational dissimilarity matrices of a trained network (paper Fig. 4).

    1 - Pearson r between the activations of eval.rdm_samples seeded samples sorted by class,
    before (F) and after (Z) the main fully connected layer, for all samples and for
    eval.rdm_classes seeded classes; rdm.json holds the within-class and between-class means
    and their ratio, so runs compare by number.
    """
    from eed.stages import rdm as stage

    stage.rdm(
        load(params, set_),
        source,
        split=split.value,
        classifiers=classifier or [],
        seed=seed,
        out=out,
        which=checkpoint.value,
        log=log,
    )
