"""The plan of ``eed grid`` (:mod:`eed.stages.grid`): its cells and what each still needs.

A cell is one combination of the sweeps (DVC's ``-S key=v1,v2`` syntax, several ``-S`` make a
product). It is known by a hash of its training settings (:func:`eed.config.training_settings`,
every key that can change the weights), and its training run is found in the store by the same
hash of the params the run logged, never by name. Its folder is ``<out>/<hash>``:
``train/`` (``last.pt``, from which an interrupted cell resumes into the same run) and
``evaluate/``. The executors (:mod:`eed.stages.grid_local`) run :func:`cell_commands`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eed import tracking
from eed.config import Config, is_training_key, load_config, training_settings
from eed.engine.checkpoint import Checkpoint
from eed.errors import ConfigError
from eed.models.from_config import resolve_architecture

# What a cell still needs, from the store and its folder.
TRAIN, EVALUATE, DONE = "train", "evaluate", "done"
CELL_TAG = "eed.grid.cell"  # the cell's settings hash, a tag of its training run


def expand_sweeps(sweeps: Sequence[str]) -> list[list[str]]:
    """``["method=eed,branchynet", "seed=0,1"]`` -> the product as override lists, in order
    (``[["method=eed", "seed=0"], ["method=eed", "seed=1"], ...]``). A value holding a comma
    inside brackets (``loss.teacher=[1,main]``) is one value."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        if not sep or not key.strip() or not values:
            raise ConfigError(f"-S {sweep!r}: expected KEY=VALUE[,VALUE...], e.g. -S method=eed,branchynet")
        axes.append([f"{key.strip()}={value}" for value in _split_values(values)])
    return [list(cell) for cell in itertools.product(*axes)]


def _split_values(values: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in values:
        depth += (char in "[{" and 1) or (char in "]}" and -1) or 0
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def settings_hash(settings: dict[str, str]) -> str:
    """12 hex digits naming a set of training settings (flattened keys -> logged strings)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def run_settings_hash(params: dict[str, str]) -> str:
    """The same hash of a logged training run, from the params it logged."""
    return settings_hash({key: value for key, value in params.items() if is_training_key(key)})


@dataclass
class Cell:
    overrides: list[str]  # the sweep's values, e.g. ["method=eed", "seed=0"]
    key: str  # settings_hash of its training settings
    config: Config
    folder: Path
    run_id: str | None = None
    needs: str = TRAIN
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or "(params.yaml as it is)"


def plan(
    params: Path | None, base_overrides: Sequence[str], sweeps: Sequence[str], out: Path, tracking_uri: str
) -> list[Cell]:
    """Every cell of the grid with what it still needs: ``train`` (none FINISHED in the store;
    an interrupted one resumes from its folder's last.pt), ``evaluate`` (trained, but neither an
    evaluate run of it in the store nor evaluate/metrics.json in its folder) or ``done``. Cells
    with equal training settings are one."""
    cells: dict[str, Cell] = {}
    for overrides in expand_sweeps(sweeps):
        # Resolved as the trainer resolves it before logging its params (model.width from the preset).
        config = resolve_architecture(load_config(params, [*base_overrides, *overrides]))
        key = settings_hash(training_settings(config))
        if key not in cells:
            cells[key] = Cell(overrides, key, config, out / key)
    finished = {}
    for run in tracking.find_runs(tracking_uri):  # (every experiment: a new store has none yet)
        if run.status == "FINISHED":
            finished.setdefault(run_settings_hash(run.params), run.run_id)
    for cell in cells.values():
        cell.run_id = finished.get(cell.key)
        if cell.run_id is None:
            cell.needs = TRAIN
        elif (cell.folder / "evaluate" / "metrics.json").is_file() or "evaluate" in tracking.stage_runs(
            tracking_uri, cell.run_id
        ):  # (evaluated here, or elsewhere: its evaluate run is in the store)
            cell.needs = DONE
        else:
            cell.needs = EVALUATE
    return list(cells.values())


def cell_commands(cell: Cell, params: Path | None, base_overrides: Sequence[str], tracking_uri: str) -> list[list[str]]:
    """The ``eed`` commands that finish ``cell``: train (resuming its last.pt, if any) unless its
    run is FINISHED, then evaluate its best.pt (a child run of the training run; logs the served
    model)."""
    eed = [sys.executable, "-m", "eed.cli"]
    settings = ["--set", f"paths.out_dir={cell.folder}", "--set", f"tracking.uri={tracking_uri}"]
    common = [
        *(["--params", str(params)] if params else []),
        *[arg for override in [*base_overrides, *cell.overrides] for arg in ("--set", override)],
        *settings,
    ]
    commands = []
    if cell.needs == TRAIN:
        commands.append([*eed, "train", *common])
    if cell.needs in (TRAIN, EVALUATE):
        # A run trained elsewhere (found by its hash: another folder, a make run) is evaluated by its id.
        best = cell.folder / "train" / "checkpoints" / "best.pt"
        source = cell.run_id if cell.needs == EVALUATE and cell.run_id else best
        commands.append([*eed, "evaluate", str(source), *common])
    return commands


def tag_run(cell: Cell, tracking_uri: str, tags: dict[str, str]) -> None:
    """Tag the training run of ``cell`` (the run its ``last.pt`` names, once there is one) with its
    hash and ``tags``; remember its id."""
    last = cell.folder / "train" / "checkpoints" / "last.pt"
    run_id = Checkpoint.load(last).run_id if last.is_file() else None
    if run_id:
        cell.run_id = run_id
        tracking.MlflowLogger(tracking_uri, run_id).set_tags({CELL_TAG: cell.key, **tags})
