"""``eed rdm`` and the rdm stage: representational dissimilarity matrices (paper Fig. 4)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eed import data as eed_data
from eed.config import Config
from eed.engine.runtime import setup_runtime
from eed.metrics.rdm import RdmResult, compute_rdms, layer_activations, select_samples
from eed.models.from_config import resolve_architecture
from eed.paths import ensure_writable, in_workspace
from eed.reporting import tables
from eed.reporting.files import write_rdm_outputs
from eed.reporting.records import figure_caption
from eed.stages import stderr, stdout
from eed.stages.common import (
    SPLITS,
    choice,
    collect,
    default_source,
    in_float32,
    log_stage_run,
    logging_uri,
    on_runtime,
    source_model,
    stage_params,
)


@dataclass
class RdmRun:
    result: RdmResult
    files: list[Path]
    run_id: str | None = None


def rdm(
    config: Config,
    source: str | None = None,
    *,
    split: str = "test",
    classifiers: Sequence[str] = ("main",),
    seed: int = 0,
    out: Path | None = None,
    which: str = "best",
    log: bool = True,
    batch_size: int = 250,
) -> RdmRun:
    """``eed rdm`` and the rdm stage: RDMs of a checkpoint (file or MLflow run id) on
    ``eval.rdm_samples`` samples of ``split``, zoomed on ``eval.rdm_classes`` classes.

    Only the sampled images are read and run through the network, in float32 (no autocast:
    correlations of a few hundred samples are cheap, and should not carry bf16 rounding).
    The samples' seed stays fixed (not the run's ``seed``), so every run is compared on the
    same images.
    """
    started = time.time()
    config = resolve_architecture(config)
    source = source or default_source(config)
    split = choice("--split", split, SPLITS)
    classifiers = ["main", *[c for c in classifiers if c != "main"]]
    out_dir = Path(out or in_workspace(config.paths.out_dir) / "rdm")
    log = log and config.tracking.enabled
    for folder in (out_dir, out_dir / "figures"):  # an unusable folder fails now, not after the pass
        ensure_writable(folder)
    tracking_uri, resolved, model = source_model(source, config, log, which)
    runtime = in_float32(setup_runtime(config.train))
    model = on_runtime(model, runtime)

    labels = torch.from_numpy(eed_data.read_labels(eed_data.load_manifest(config).split_path(split)))
    indices = select_samples(labels, min(config.eval.rdm_samples, len(labels)), seed)
    collected = collect(
        config, model, runtime, split, stderr(), indices=indices, with_features=True, batch_size=batch_size
    )
    activations = layer_activations(collected, model.classifier_names(), torch.arange(len(indices)), classifiers)
    result = compute_rdms(activations, collected.labels, indices, config.eval.rdm_classes, seed)
    files = write_rdm_outputs(
        result,
        out_dir,
        caption=figure_caption(config),
        split=split,
        class_names=eed_data.load_manifest(config).class_names,
    )

    run_id = None
    if log:
        run_id = log_stage_run(
            "rdm",
            logging_uri(tracking_uri),
            config,
            resolved,
            split,
            {"rdm": result.metrics()},
            files,
            out_dir,
            started=started,
            params={
                **stage_params(config, ("eval.rdm_samples", "eval.rdm_classes")),
                "classifiers": ",".join(classifiers),
                "sample_seed": seed,
            },
        )

    console = stdout()
    console.print(tables.rdm_table(result, split))
    console.print(f"Wrote {', '.join(str(f) for f in files)}")
    if run_id:
        console.print(f"MLflow run: {run_id}", highlight=False)
    return RdmRun(result, files, run_id)
