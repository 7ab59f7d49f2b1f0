"""``eed report`` and the report stage, the pipeline's last: the training curves drawn from the
train stage's checkpoint (here, not in the train stage, so that a change to a figure never
retrains), and the headline numbers of the run in ``<paths.out_dir>/results.json`` (the one DVC
metrics file) and as a table on the console, so that ``dvc repro`` ends with its outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eed import tracking
from eed.config import Config
from eed.engine.checkpoint import Checkpoint
from eed.errors import DataError
from eed.paths import ensure_writable, in_workspace
from eed.reporting.headline import headline, results_table
from eed.reporting.records import figure_caption, write_json
from eed.reporting.training_curves import plot_training_curves
from eed.stages import stdout

RESULTS_FILE = "results.json"


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: run the {stage} stage first (dvc repro {stage})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}): re-run the {stage} stage") from None


def training_figures(config: Config, train_dir: Path | None = None) -> list[Path]:
    """The training curves (Figs. 3 and 5) of ``train_dir``'s ``checkpoints/last.pt`` history, PNG and
    SVG, in ``train_dir/figures``, and logged into its training run (without re-opening it) when
    tracking is on. None when there is no checkpoint yet."""
    train_dir = Path(train_dir or in_workspace(config.paths.out_dir) / "train")
    last = train_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        stdout().print(f"[yellow]note:[/] no training curves: {last} does not exist (run the train stage first)")
        return []
    checkpoint = Checkpoint.load(last)
    ensure_writable(train_dir / "figures")
    figures = plot_training_curves(checkpoint.state.history, train_dir / "figures", caption=figure_caption(config))
    if config.tracking.enabled and checkpoint.run_id and figures:
        tracking_uri = tracking.resolve_tracking_uri(config)
        tracking.check_tracking_uri(tracking_uri)
        run = tracking.MlflowLogger(tracking_uri, checkpoint.run_id)
        for figure in figures:
            run.log_artifact(figure, "figures")
    return figures


def report(config: Config, *, out: Path | None = None) -> dict[str, Any]:
    """Draw the training curves (:func:`training_figures`), read the evaluate stage's metrics.json
    (and the train stage's, for the max over epochs), write ``results.json`` and print the results
    table; returns the headline mapping."""
    out_dir = in_workspace(config.paths.out_dir)
    path = Path(out or out_dir / RESULTS_FILE)
    ensure_writable(path.parent)  # before reading: a bad --out fails first
    training_figures(config)
    evaluation = _read_json(out_dir / "evaluate" / "metrics.json", "evaluate")
    train_metrics = out_dir / "train" / "metrics.json"
    training = _read_json(train_metrics, "train") if train_metrics.is_file() else None
    results = headline(evaluation)
    write_json(results, path)
    console = stdout()
    console.print(f'wrote {path} (dvc exp show: README, "Compare experiments")', highlight=False)
    console.print(results_table(evaluation, training, caption=figure_caption(config)))  # the last thing eed prints
    return results
