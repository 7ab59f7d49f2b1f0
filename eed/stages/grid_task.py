"""What a Slurm task of ``eed grid`` runs (:mod:`eed.stages.grid_slurm` submits it).

Its own module, importing neither torch nor MLflow: submitit unpickles the task in a fresh
Python on the node, which then only starts the cell's ``eed`` commands.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import submitit


class CellTask(submitit.helpers.Checkpointable):
    """One cell's commands, their output appended to ``log``, with ``MLFLOW_TRACKING_URI`` set to the
    grid's store (the job inherits the submitting shell's variables, which would win over it);
    returns the first failing exit code or 0."""

    def __init__(self, commands: list[list[str]], log: Path, tracking_uri: str) -> None:
        self.commands, self.log, self.tracking_uri = commands, log, tracking_uri

    def __call__(self) -> int:
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri}
        with open(self.log, "a") as out:
            for command in self.commands:
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
                if code != 0:
                    return code
        return 0
