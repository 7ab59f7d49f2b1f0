"""``eed report`` and the report stage, the pipeline's last: the headline numbers of the run
in ``<paths.out_dir>/results.json`` (the one DVC metrics file) and as a table on the console,
so that ``dvc repro`` ends with its outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eed.config import Config
from eed.errors import DataError
from eed.paths import ensure_writable, in_workspace
from eed.reporting.files import figure_caption, write_json
from eed.reporting.headline import headline, results_table
from eed.stages import stdout

RESULTS_FILE = "results.json"


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: run the {stage} stage first (dvc repro {stage})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}): re-run the {stage} stage") from None


def report(config: Config, *, out: Path | None = None) -> dict[str, Any]:
    """Read the evaluate stage's metrics.json (and the train stage's, for the max over epochs),
    write ``results.json`` and print the results table; returns the headline mapping."""
    out_dir = in_workspace(config.paths.out_dir)
    path = Path(out or out_dir / RESULTS_FILE)
    ensure_writable(path.parent)  # before reading: a bad --out fails first
    evaluation = _read_json(out_dir / "evaluate" / "metrics.json", "evaluate")
    train_metrics = out_dir / "train" / "metrics.json"
    training = _read_json(train_metrics, "train") if train_metrics.is_file() else None
    results = headline(evaluation)
    write_json(results, path)
    console = stdout()
    console.print(results_table(evaluation, training, caption=figure_caption(config)))
    console.print(f"wrote {path} (dvc exp show: README, \"Compare experiments\")", highlight=False)
    return results
