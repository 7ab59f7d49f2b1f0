"""`eed paper` on a small store made here: ours beside the paper per cell, the paired interval
against branchynet computed by hand, the protocol column, "no runs" for the paper's rows the
store lacks, Table III computed, Table IV, and a self-contained HTML page with the figures."""

from __future__ import annotations

import base64
import math
import re
import statistics

import pytest
import typer
from scipy.stats import t
from typer.testing import CliRunner

from eed.config import flatten, load_config
from eed.models.from_config import resolve_architecture

OUTPUTS = ["exit1", "exit2", "exit3", "main", "ensemble"]
# (method, teacher) -> seed -> test accuracy of best.pt per output (fractions); max over epochs adds 0.01
RESULTS = {
    ("branchynet", None): {
        0: [0.161, 0.172, 0.198, 0.232, 0.209],
        1: [0.158, 0.170, 0.203, 0.227, 0.212],
        2: [0.166, 0.181, 0.201, 0.240, 0.215],
    },
    ("eed", None): {
        0: [0.170, 0.183, 0.190, 0.210, 0.196],
        1: [0.172, 0.180, 0.187, 0.199, 0.190],
        2: [0.169, 0.188, 0.193, 0.205, 0.199],
    },
    ("eed", "[1, 'main']"): {0: [0.168, 0.181, 0.191, 0.214, 0.197], 1: [0.166, 0.184, 0.186, 0.201, 0.188]},
}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Training runs as the trainer logs them (every resolved param of the cpu preset, β = 0 for
    eed as in Table IV), one with a figure, and their test metrics."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("eed", artifact_location=(folder / "artifacts").as_uri())
    params = flatten(resolve_architecture(load_config(None, ["loss.beta=0"])))
    params.update(
        {
            "scale": "cpu",
            "model.width": "16",
            "train.epochs": "4",
            "train.schedule": "onecycle",
            "data.train_subset": "20000",
            "data.val_size": "5000",
        }
    )
    for (method, teacher), seeds in RESULTS.items():
        for seed, accuracies in seeds.items():
            run = client.create_run(experiment, tags={"method": method})
            logged = {**params, "method": method, "seed": str(seed), "loss.teacher": teacher or "null"}
            metrics = [Metric(f"test/acc_{o}", value, 0, 4) for o, value in zip(OUTPUTS, accuracies)]
            metrics += [Metric(f"test/max_acc_{o}", value + 0.01, 0, 4) for o, value in zip(OUTPUTS, accuracies)]
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in logged.items()])
            if seed == 0:
                (folder / "stability.png").write_bytes(PNG)
                client.log_artifact(run.info.run_id, str(folder / "stability.png"), "figures")
            client.set_terminated(run.info.run_id)
    return uri


def mean_std(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def test_the_report_sets_each_cell_beside_the_papers(store, tmp_path, monkeypatch):
    from eed.commands.paper_cmd import paper

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: eed\n")
    app = typer.Typer()
    app.command()(paper)
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "report" / "paper.md").read_text()
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows.setdefault((cells[0], cells[2][:40]), cells) if line.startswith("| ") else None

    # Table I: ours over the paper's (branchynet = "CE (2)": main 78.58), the protocol of the cell.
    branchynet = next(
        cells for (name, protocol), cells in rows.items() if name == "branchynet" and protocol.startswith("scale cpu")
    )
    mains = [accuracies[3] for accuracies in RESULTS[("branchynet", None)].values()]
    assert branchynet[1] == "Table I: CE (2)" and branchynet[3] == "3"
    assert branchynet[7] == f"{mean_std(mains)}<br>paper 78.58"
    assert branchynet[2] == (
        "scale cpu, width 16, 4 epochs onecycle, 20000 training images, validation split 5000; "
        "seeds 0, 1, 2; test accuracy of best.pt (epoch chosen on validation)"
    )
    maximum = next(
        cells
        for (name, protocol), cells in rows.items()
        if name == "branchynet" and protocol.startswith("the same runs; max over epochs")
    )
    assert maximum[7] == f"{mean_std([m + 0.01 for m in mains])}<br>paper 78.58"
    eed = next(
        cells
        for (name, protocol), cells in rows.items()
        if name == "eed (l_z=mse, α=1, β=0, teacher=all)" and protocol.startswith("scale")
    )
    assert eed[1] == "Table I: α = 1 (MSE), β = 0 in (8)" and eed[7].endswith("<br>paper 79.25")
    # A row of the paper the store has no runs for says so, with the paper's number.
    baseline = rows[("baseline", "no runs")]
    assert baseline[1] == "Table I: CE (without exits)" and baseline[7] == "no runs<br>paper 77.71"

    # The paired difference of eed against branchynet, by hand: Student t, 2 degrees of freedom.
    d = [100 * (RESULTS[("eed", None)][s][3] - RESULTS[("branchynet", None)][s][3]) for s in range(3)]
    half = t.ppf(0.975, 2) * statistics.stdev(d) / math.sqrt(3)
    low, high = statistics.mean(d) - half, statistics.mean(d) + half
    interval = f"{statistics.mean(d):+.2f}{'*' if high < 0 or low > 0 else ''} [{low:+.2f}, {high:+.2f}]"
    difference = next(
        cells
        for (name, _), cells in rows.items()
        if name == "eed (l_z=mse, α=1, β=0, teacher=all)" and cells[3] == "paired by seed"
    )
    assert difference[1:3] == ["branchynet", "3"] and difference[7] == interval

    # Table III computed (ResNet-18 at width 64: 1.11 GFLOPs to the main output) beside the paper's 1.12.
    assert re.search(r"\| resnet18 \| ours, width 64 \| 0\.4\d* \| 0\.6\d* \| 0\.8\d* \| 1\.11 \|", markdown)
    assert "| resnet18 | paper (its own width) | 0.42 | 0.66 | 0.88 | 1.12 |" in markdown
    # Table IV: the teacher subset [1, main] (the paper's 78.80) against all classifiers, paired over seeds 0, 1.
    subset = next(
        line
        for line in markdown.split("## Table IV")[1].splitlines()
        if line.startswith("| eed (l_z=mse, α=1, β=0, teacher=[1, 'main'])")
    )
    d = [100 * (RESULTS[("eed", "[1, 'main']")][s][3] - RESULTS[("eed", None)][s][3]) for s in range(2)]
    half = t.ppf(0.975, 1) * statistics.stdev(d) / math.sqrt(2)
    assert (
        f"| 78.80 | {statistics.mean(d):+.2f} [{statistics.mean(d) - half:+.2f}, {statistics.mean(d) + half:+.2f}]"
        in subset
    )
    assert "| eed (l_z=mse, β=0, teacher=[3, 'main']) | no runs | 0 | no runs | no runs | 78.25 | - |" in markdown

    # Figures: the one logged is shown; one not logged says how to make it.
    assert "![Fig. 5: every classifier's accuracy per epoch: branchynet" in markdown
    assert "Fig. 2 of branchynet, seed 0: not logged (`eed evaluate " in markdown
    page = (tmp_path / "report" / "paper.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "paper 78.58" in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)  # needs no other file
