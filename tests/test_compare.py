"""`eed compare` on runs logged in the test to a temporary sqlite MLflow store: three seeds of
two methods, plus runs that must be left out (unfinished, a nested evaluate run)."""

from __future__ import annotations

import csv
import statistics

import matplotlib.image
import pytest
import typer
from typer.testing import CliRunner

from eed.errors import ConfigError
from eed.reporting.comparison import Cell, build_table, parse_tags
from eed.tracking import RunRecord, find_runs

CLASSIFIERS = ["exit1", "exit2", "exit3", "main", "ensemble"]
# method -> seed -> accuracies (fractions) of exit1, exit2, exit3, main, ensemble
RESULTS = {
    "branchynet": {0: [0.601, 0.702, 0.751, 0.760, 0.771], 1: [0.612, 0.698, 0.747, 0.764, 0.775],
                   2: [0.596, 0.707, 0.744, 0.757, 0.769]},
    "eed": {0: [0.625, 0.719, 0.770, 0.781, 0.783], 1: [0.631, 0.714, 0.768, 0.779, 0.782],
            2: [0.622, 0.723, 0.774, 0.786, 0.788]},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """A sqlite store with the trainer's params/tags/metrics names; returns its URI and run ids."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("cmp", artifact_location=(folder / "artifacts").as_uri())
    run_ids: dict[str, list[str]] = {}
    for method, seeds in RESULTS.items():
        for seed, accuracies in seeds.items():
            run = client.create_run(experiment_id, tags={"method": method, "arch": "resnet18", "dataset": "cifar100"})
            params = {"method": method, "seed": str(seed), "model.arch": "resnet18", "data.dataset": "cifar100",
                      "loss.output": "mse", "loss.alpha": "1.0", "loss.beta": "1.0" if seed != 1 else "1"}
            metrics = [Metric(f"val/acc_{name}", value - 0.01, 0, epoch)
                       for epoch in (1, 2) for name, value in zip(CLASSIFIERS, accuracies)]
            metrics += [Metric(f"test/acc_{name}", value, 0, 2) for name, value in zip(CLASSIFIERS, accuracies)]
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
            client.set_terminated(run.info.run_id)
            run_ids.setdefault(method, []).append(run.info.run_id)
    # Left out: a run that never finished its test, and an evaluate child run with test metrics.
    unfinished = client.create_run(experiment_id, tags={"method": "eed"}).info.run_id
    client.log_param(unfinished, "method", "eed")
    child = client.create_run(experiment_id, run_name="evaluate",
                              tags={"mlflow.parentRunId": run_ids["eed"][0], "eed.stage": "evaluate", "method": "eed"})
    client.log_metric(child.info.run_id, "test/acc_main", 0.99)
    return uri, run_ids


def invoke_compare(uri: str, args: list[str], tmp_path, monkeypatch):
    from eed.commands.compare_cmd import compare

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  experiment: cmp\n")
    app = typer.Typer()
    app.command()(compare)
    return CliRunner().invoke(app, [*args, "--params", str(params), "--out", str(tmp_path / "out")],
                              env={"COLUMNS": "250"})


def expected_cell(method: str, column: str) -> str:
    values = [100 * accuracies[CLASSIFIERS.index(column)] for accuracies in RESULTS[method].values()]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"  # stdev: sample std


def test_compare_prints_mean_and_sample_std(store, tmp_path, monkeypatch):
    uri, run_ids = store
    result = invoke_compare(uri, [], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    for method in RESULTS:
        for column in CLASSIFIERS:
            assert expected_cell(method, column) in result.output
    assert "skipped 1 runs" in result.output  # the unfinished one; the child run is not a training run

    markdown = (tmp_path / "out" / "comparison.md").read_text().splitlines()
    assert markdown[0].startswith("| Method | l_z | α | β | n | Exit 1 | Exit 2 | Exit 3 | Main | Ensemble |")
    eed_row = next(line for line in markdown if line.startswith("| eed"))
    assert f"**{expected_cell('eed', 'main')}**" in eed_row and "| 3 |" in eed_row  # best main marked
    assert "**" not in next(line for line in markdown if line.startswith("| branchynet"))
    assert "| branchynet | — | — | — | 3 |" in "\n".join(markdown)  # CE only: loss settings do not apply

    with (tmp_path / "out" / "comparison.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    for method in RESULTS:
        values = [100 * accuracies[3] for accuracies in RESULTS[method].values()]
        assert float(rows[method]["main_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
        assert float(rows[method]["main_std"]) == pytest.approx(statistics.stdev(values), rel=1e-5)
        assert rows[method]["n"] == "3" and sorted(rows[method]["run_ids"].split()) == sorted(run_ids[method])
    assert rows["eed"]["best_main"] == "1" and rows["branchynet"]["best_main"] == "0"

    figure = tmp_path / "out" / "figures" / "comparison.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(figure).shape[0] > 100


def test_selection_by_tag_and_run_id(store, tmp_path, monkeypatch):
    uri, run_ids = store
    only_eed = build_table(find_runs(uri, experiments=["cmp"], tags={"method": "eed"}))
    assert [row.key["method"] for row in only_eed.rows] == ["eed"] and only_eed.rows[0].n == 3
    two = build_table(find_runs(uri, run_ids=run_ids["branchynet"][:2]))
    assert two.rows[0].n == 2
    val = build_table(find_runs(uri, experiments=["cmp"]), split="val")  # the last epoch's val metrics
    assert val.rows[0].cells["main"].mean == pytest.approx(statistics.mean(
        RESULTS["branchynet"][s][3] - 0.01 for s in range(3)))
    result = invoke_compare(uri, ["--tag", "method=branchynet"], tmp_path, monkeypatch)
    assert result.exit_code == 0 and expected_cell("branchynet", "main") in result.output
    assert expected_cell("eed", "main") not in result.output


def test_clear_errors(store, tmp_path, monkeypatch):
    uri, _ = store
    result = invoke_compare(uri, ["no-such-experiment"], tmp_path, monkeypatch)
    assert result.exit_code == 5 and "no MLflow experiment 'no-such-experiment'" in result.output
    result = invoke_compare(uri, ["--run-id", "0" * 32], tmp_path, monkeypatch)
    assert result.exit_code == 5 and "no MLflow run" in result.output
    result = invoke_compare(uri, ["--tag", "method=byot"], tmp_path, monkeypatch)
    assert result.exit_code == 5 and "no finished training runs" in result.output
    with pytest.raises(ConfigError, match="key=value"):
        parse_tags(["method"])


def test_single_run_cell_has_no_std():
    cell = Cell([0.7812])
    assert cell.std is None and cell.format() == "78.12"
    assert Cell([0.5, 0.7]).format() == f"60.00 ± {100 * statistics.stdev([0.5, 0.7]):.2f}"


def test_compare_help():
    from eed.commands.compare_cmd import compare

    app = typer.Typer()
    app.command()(compare)
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "--tag" in result.output and "--run-id" in result.output


def test_runs_repeating_a_seed_are_flagged():
    def record(run_id: str, seed: str, main: float) -> RunRecord:
        return RunRecord(run_id, {"method": "eed", "seed": seed, "model.arch": "resnet18",
                                  "data.dataset": "cifar100"}, {}, {"test/acc_main": main})

    distinct = build_table([record("a", "0", 0.5), record("b", "1", 0.6)])
    assert distinct.warnings() == [] and "Note:" not in distinct.to_markdown()
    rerun = build_table([record("a", "0", 0.5), record("b", "0", 0.6), record("c", "1", 0.7)])
    (warning,) = rerun.warnings()
    assert "3 runs but seed 0 more than once" in warning and rerun.rows[0].repeated_seeds == ["0"]
    assert f"Note: {warning}." in rerun.to_markdown()
