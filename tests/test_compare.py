"""`eed compare` on runs logged in the test to a temporary sqlite MLflow store: three seeds of
two methods, plus runs that must be left out (unfinished, killed, a nested evaluate run); and
the grouping on records built here: every training setting but the seed splits rows."""

from __future__ import annotations

import csv
import itertools
import re
import statistics

import matplotlib.image
import matplotlib.legend
import matplotlib.text
import pytest
import typer
from typer.testing import CliRunner

from eed.config import flatten, load_config
from eed.errors import ConfigError
from eed.models.from_config import resolve_architecture
from eed.reporting.comparison import Cell, build_table, parse_tags
from eed.tracking import RunRecord, find_runs

CLASSIFIERS = ["exit1", "exit2", "exit3", "main", "ensemble"]
# method -> seed -> accuracies (fractions) of exit1, exit2, exit3, main, ensemble
RESULTS = {
    "branchynet": {
        0: [0.601, 0.702, 0.751, 0.760, 0.771],
        1: [0.612, 0.698, 0.747, 0.764, 0.775],
        2: [0.596, 0.707, 0.744, 0.757, 0.769],
    },
    "eed": {
        0: [0.625, 0.719, 0.770, 0.781, 0.783],
        1: [0.631, 0.714, 0.768, 0.779, 0.782],
        2: [0.622, 0.723, 0.774, 0.786, 0.788],
    },
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
            params = {
                "method": method,
                "seed": str(seed),
                "model.arch": "resnet18",
                "data.dataset": "cifar100",
                "loss.output": "mse",
                "loss.alpha": "1.0",
                "loss.beta": "1.0" if seed != 1 else "1",
            }
            metrics = [
                Metric(f"val/acc_{name}", value - 0.01, 0, epoch)
                for epoch in (1, 2)
                for name, value in zip(CLASSIFIERS, accuracies)
            ]
            metrics += [Metric(f"test/acc_{name}", value, 0, 2) for name, value in zip(CLASSIFIERS, accuracies)]
            metrics += [
                Metric(f"test/max_acc_{name}", value + 0.02, 0, 2) for name, value in zip(CLASSIFIERS, accuracies)
            ]
            metrics += [Metric(f"test/max_acc_epoch_{name}", 1, 0, 2) for name in CLASSIFIERS]
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
            client.set_terminated(run.info.run_id)
            run_ids.setdefault(method, []).append(run.info.run_id)
    # Left out: a run that never finished its test, a killed run that had logged the best accuracies
    # (it must not count), and an evaluate child run with test metrics.
    unfinished = client.create_run(experiment_id, tags={"method": "eed"}).info.run_id
    client.log_param(unfinished, "method", "eed")
    killed = client.create_run(experiment_id, tags={"method": "eed", "arch": "resnet18", "dataset": "cifar100"})
    params = {
        "method": "eed",
        "seed": "3",
        "model.arch": "resnet18",
        "data.dataset": "cifar100",
        "loss.output": "mse",
        "loss.alpha": "1.0",
        "loss.beta": "1.0",
    }
    metrics = [Metric(f"{split}/acc_{name}", 0.99, 0, 2) for split in ("val", "test") for name in CLASSIFIERS]
    client.log_batch(killed.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(killed.info.run_id, status="KILLED")
    run_ids["killed"] = [killed.info.run_id]
    child = client.create_run(
        experiment_id,
        run_name="evaluate",
        tags={"mlflow.parentRunId": run_ids["eed"][0], "eed.stage": "evaluate", "method": "eed"},
    )
    client.log_metric(child.info.run_id, "test/acc_main", 0.99)
    return uri, run_ids


def invoke_compare(uri: str, args: list[str], tmp_path, monkeypatch, columns: int = 250):
    from eed.commands.compare_cmd import compare

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  experiment: cmp\n")
    app = typer.Typer()
    app.command()(compare)
    return CliRunner().invoke(
        app, [*args, "--params", str(params), "--out", str(tmp_path / "out")], env={"COLUMNS": str(columns)}
    )


def expected_cell(method: str, column: str) -> str:
    values = [100 * accuracies[CLASSIFIERS.index(column)] for accuracies in RESULTS[method].values()]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"  # stdev: sample std


def printed(cell: str, output: str) -> bool:
    """Whether the console shows ``cell`` ("mean ± std") as eed compare prints it: the mean (a * after
    the best main), the ± std right below it, both right-aligned in one column."""
    mean, _, std = cell.partition(" ± ")

    def ends(pattern: str, line: str) -> set[int]:
        return {match.end() for match in re.finditer(pattern, line)}

    lines = output.splitlines()
    return (
        any(
            ends(rf"(?<![\d.]){re.escape(mean)}\*?(?=\s|$)", line) & ends(rf"±{re.escape(std)}(?=\s|$)", below)
            for line, below in itertools.pairwise(lines)
        )
        if std
        else mean in output
    )


def test_compare_prints_mean_and_sample_std(store, tmp_path, monkeypatch):
    uri, run_ids = store
    result = invoke_compare(uri, [], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    for method in RESULTS:
        for column in CLASSIFIERS:
            assert printed(expected_cell(method, column), result.output), (method, column, result.output)
    assert "skipped 1 runs" in result.output  # the unfinished one; the child run is not a training run
    left_out = f"left out 1 runs that did not finish (KILLED: {run_ids['killed'][0]})"
    assert left_out in result.output and "99.00" not in result.output

    markdown = (tmp_path / "out" / "comparison.md").read_text().splitlines()[2:]  # after what the numbers are
    assert markdown[0] == "Common to all rows: Network=resnet18, Dataset=cifar100"  # shared settings once, above
    assert markdown[2].startswith("| Method | l_z | α | β | n | Exit 1 | Exit 2 | Exit 3 | Main | Ensemble |")
    assert f"Note: {left_out}." in markdown
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
    assert_the_difference_from_branchynet_is_shown_with_its_interval(result.output, tmp_path / "out")


def stacked(above: str, below: str, output: str) -> bool:
    """Whether ``above`` is printed right over ``below``, both right-aligned in one column."""
    lines = output.splitlines()
    return any(
        {m.end() for m in re.finditer(re.escape(above) + r"(?=\s|$)", line)}
        & {m.end() for m in re.finditer(re.escape(below), under)}
        for line, under in itertools.pairwise(lines)
    )


def assert_the_difference_from_branchynet_is_shown_with_its_interval(output: str, out) -> None:
    """By default eed is compared with branchynet: per output, the mean paired difference over the three
    seeds with its Student-t interval, on the console, in comparison.md, differences.csv and a figure."""
    from scipy.stats import t

    for position, column in enumerate(CLASSIFIERS):
        d = [100 * (RESULTS["eed"][s][position] - RESULTS["branchynet"][s][position]) for s in range(3)]
        half = t.ppf(0.975, 2) * statistics.stdev(d) / 3**0.5
        low, high = statistics.mean(d) - half, statistics.mean(d) + half
        mark = "*" if low > 0 or high < 0 else ""
        cell = f"{statistics.mean(d):+.2f}{mark} [{low:+.2f}, {high:+.2f}]"
        assert stacked(f"{statistics.mean(d):+.2f}{mark}", f"[{low:+.2f},", output), (column, cell, output)
        assert stacked(f"[{low:+.2f},", f"{high:+.2f}]", output), (column, cell, output)
        assert cell in (out / "comparison.md").read_text()
    with (out / "differences.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["against"] == "branchynet" and row["pairing"] == "paired" and row["n"] == "3"
    assert float(row["main_diff_pts"]) == pytest.approx(
        100 * statistics.mean(RESULTS["eed"][s][3] - RESULTS["branchynet"][s][3] for s in range(3)), rel=1e-5
    )
    assert "Difference from the reference row" in output and "Student t" in " ".join(output.split())
    assert matplotlib.image.imread(out / "figures" / "differences.png").shape[0] > 100


def test_selection_by_tag_and_run_id(store, tmp_path, monkeypatch):
    uri, run_ids = store
    only_eed = build_table(find_runs(uri, experiments=["cmp"], tags={"method": "eed"}))
    assert [row.key["method"] for row in only_eed.rows] == ["eed"] and only_eed.rows[0].n == 3
    two = build_table(find_runs(uri, run_ids=run_ids["branchynet"][:2]))
    assert two.rows[0].n == 2
    val = build_table(find_runs(uri, experiments=["cmp"]), split="val")  # the last epoch's val metrics
    assert val.rows[0].cells["main"].mean == pytest.approx(
        statistics.mean(RESULTS["branchynet"][s][3] - 0.01 for s in range(3))
    )
    result = invoke_compare(uri, ["--tag", "method=branchynet"], tmp_path, monkeypatch)
    assert result.exit_code == 0 and printed(expected_cell("branchynet", "main"), result.output)
    assert not printed(expected_cell("eed", "main"), result.output)


def test_the_papers_max_over_epochs_is_tabulated_under_its_name(store, tmp_path, monkeypatch):
    """--split test_max reads test/max_acc_* (not the per-output epochs) and says what they are."""
    uri, _ = store
    table = build_table(find_runs(uri, experiments=["cmp"]), split="test_max")
    assert table.columns == list(CLASSIFIERS)  # test/max_acc_epoch_* are not outputs
    assert table.rows[0].cells["main"].mean == pytest.approx(
        statistics.mean(RESULTS["branchynet"][s][3] + 0.02 for s in range(3))
    )
    meaning = "max over epochs, as in the paper; selected on test, optimistic"
    assert meaning in table.to_markdown().splitlines()[0]
    result = invoke_compare(uri, ["--split", "test_max"], tmp_path, monkeypatch)
    assert result.exit_code == 0 and "max over epochs" in " ".join(result.output.split())
    with pytest.raises(ConfigError, match="allowed: test, val, test_max"):
        build_table([], split="max")


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
        return RunRecord(
            run_id,
            {"method": "eed", "seed": seed, "model.arch": "resnet18", "data.dataset": "cifar100"},
            {},
            {"test/acc_main": main},
        )

    distinct = build_table([record("a", "0", 0.5), record("b", "1", 0.6)])
    assert distinct.warnings() == [] and "Note:" not in distinct.to_markdown()
    rerun = build_table([record("a", "0", 0.5), record("b", "0", 0.6), record("c", "1", 0.7)])
    (warning,) = rerun.warnings()
    assert "3 runs but seed 0 more than once" in warning and rerun.rows[0].repeated_seeds == ["0"]
    assert f"Note: {warning}." in rerun.to_markdown()


# --------------------------------------------------------------------------- grouping

BASE = flatten(resolve_architecture(load_config()))  # the params a training run with the default configuration logs


def training_run(
    run_id: str, changes: dict[str, str] | None = None, main: float = 0.5, status: str = "FINISHED"
) -> RunRecord:
    return RunRecord(run_id, {**BASE, **(changes or {})}, {}, {"test/acc_main": main}, status=status)


# (setting, another value, what both runs set so that the setting applies)
SPLITTING = [
    ("scale", "paper", {}),
    ("model.arch", "resnet34", {}),
    ("model.width", "64", {}),
    ("data.dataset", "cifar10", {}),
    ("data.train_subset", "0", {}),
    ("data.val_size", "0", {}),
    ("data.split_seed", "1", {}),
    ("data.backend", "tensor", {}),
    ("data.jpeg_quality", "75", {"data.dataset": "imagenet", "model.arch": "imagenet_resnet18"}),
    ("data.synthetic.num_train", "500", {"data.dataset": "synthetic"}),
    ("train.epochs", "200", {}),
    ("train.schedule", "cosine", {}),
    ("train.lr", "0.05", {}),
    ("train.batch_size", "256", {}),
    ("train.milestones", "[60, 120, 160]", {"train.schedule": "step"}),
    ("train.device", "cuda", {}),
    ("train.precision", "bf16", {}),
    ("train.channels_last", "on", {}),
    ("train.compile", "True", {}),
    ("train.deterministic", "True", {}),
    ("train.nproc", "2", {}),
    ("loss.output", "kl", {}),
    ("loss.alpha", "0.5", {}),
    ("loss.beta", "0.5", {}),
    ("loss.temperature", "4.0", {"loss.output": "kl"}),
    ("loss.teacher", "[1, 3, 'main']", {}),
]


@pytest.mark.parametrize(("setting", "value", "shared"), SPLITTING, ids=[s[0] for s in SPLITTING])
def test_runs_differing_in_a_training_setting_are_different_rows(setting, value, shared):
    runs = [training_run(f"a{seed}", {**shared, "seed": str(seed)}) for seed in (0, 1)]
    runs += [training_run(f"b{seed}", {**shared, "seed": str(seed), setting: value}, main=0.6) for seed in (0, 1)]
    table = build_table(runs)
    assert sorted(row.run_ids for row in table.rows) == [["a0", "a1"], ["b0", "b1"]]
    assert {"method", setting} <= set(table.varying) and setting not in table.constant  # l_z=kl brings in T
    # Another training setup has its own best main accuracy; another loss setting competes for it.
    assert sum(row.best_main for row in table.rows) == (1 if setting.startswith("loss.") else 2)


# (param, another value, what both runs set): params that cannot change training, settings a run ignores
NOT_SPLITTING = [
    ("data.root", "/mnt/raw", {}),
    ("data.prepared_dir", "/mnt/prepared", {}),
    ("data.num_workers", "4", {}),
    ("train.checkpoint_every", "10", {}),
    ("eval.thresholds", "11", {}),
    ("tracking.experiment", "other", {}),
    ("paths.out_dir", "elsewhere", {}),
    ("loss.alpha", "0.5", {"method": "branchynet"}),
    ("loss.temperature", "4.0", {"method": "baseline"}),
    ("loss.beta", "0.5", {"method": "distill"}),
    ("loss.teacher", "[1, 'main']", {"method": "byot"}),
    ("loss.temperature", "4.0", {"loss.output": "mse"}),
    ("train.milestones", "[10, 20]", {"train.schedule": "onecycle"}),
    ("data.jpeg_quality", "75", {"data.dataset": "cifar100"}),
    ("data.synthetic.num_train", "500", {"data.dataset": "cifar100"}),
    ("loss.alpha", "1", {"loss.alpha": "1.0"}),  # the same number written differently
]


@pytest.mark.parametrize(
    ("param", "value", "shared"),
    NOT_SPLITTING,
    ids=[f"{p}-{'-'.join(shared.values()) or 'default'}" for p, _, shared in NOT_SPLITTING],
)
def test_runs_differing_in_what_training_does_not_read_are_one_row(param, value, shared):
    table = build_table([training_run("a", shared), training_run("b", {**shared, "seed": "1", param: value})])
    (row,) = table.rows
    assert row.run_ids == ["a", "b"] and param not in table.varying and table.warnings() == []


def test_seeds_of_one_configuration_are_one_row():
    table = build_table(
        [training_run(f"r{seed}", {"seed": str(seed)}, main=main) for seed, main in ((2, 0.7), (0, 0.5), (1, 0.6))]
    )
    (row,) = table.rows
    assert row.seeds == ["0", "1", "2"] and row.run_ids == ["r0", "r1", "r2"] and "seed" not in table.settings
    assert row.cells["main"].mean == pytest.approx(0.6) and row.cells["main"].std == pytest.approx(0.1)


@pytest.mark.parametrize("status", ["KILLED", "FAILED", "RUNNING"])
def test_runs_that_did_not_finish_are_left_out_and_listed(status):
    finished = [training_run(f"r{seed}", {"seed": str(seed)}, main=0.5 + seed / 10) for seed in (0, 1)]
    cut_short = training_run("cut", {"seed": "2"}, main=0.99, status=status)
    table = build_table([*finished, cut_short])
    (row,) = table.rows
    assert row.run_ids == ["r0", "r1"] and row.cells["main"].mean == pytest.approx(0.55)
    assert table.excluded == [("cut", status)] and table.skipped == []
    note = f"left out 1 runs that did not finish ({status}: cut)"
    assert note in table.warnings() and f"Note: {note}." in table.to_markdown()
    assert build_table([cut_short]).rows == []


def test_shared_settings_once_above_the_table_varying_ones_as_columns(tmp_path):
    table = build_table(
        [
            training_run("narrow"),
            training_run("wide", {"model.width": "64"}, main=0.6),
            training_run("ce", {"method": "branchynet"}, main=0.4),
        ]
    )
    markdown = table.to_markdown()
    # First what the numbers are, then the shared settings.
    assert markdown.splitlines()[:2] == [
        "Test accuracy of best.pt (selected on validation; last epoch without one), %.",
        "",
    ]
    lines = markdown.splitlines()[2:]
    assert lines[0].startswith("Common to all rows: Network=resnet18, Dataset=cifar100, Scale=cpu, data.backend=ffcv")
    assert "train.epochs=4" in lines[0] and markdown.count("train.epochs") == 1 and "model.width" not in lines[0]
    assert lines[1] == "" and lines[2] == "| Method | l_z | α | β | Teacher | model.width | n | Main |"
    assert lines[4:] == [
        "| branchynet | — | — | — | — | 16 | 1 | 40.00 |",
        "| eed | mse | 1 | 1 | all | 16 | 1 | **50.00** |",  # the best of width 16
        "| eed | mse | 1 | 1 | all | 64 | 1 | **60.00** |",
    ]
    for hidden in (" seed=", "tracking.", "paths.", "eval.", "data.root", "data.num_workers", "checkpoint_every", "T="):
        assert hidden not in markdown  # not grouping, or used by no run (T with the mse loss)
    assert [row.label for row in table.rows] == [
        "branchynet (model.width=16)",
        "eed (l_z=mse, α=1, β=1, Teacher=all, model.width=16)",
        "eed (l_z=mse, α=1, β=1, Teacher=all, model.width=64)",
    ]
    assert table.constant_line() == lines[0]

    with table.write_csv(tmp_path / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["model.width"], row["train.epochs"], row["loss.alpha"]) for row in rows] == [
        ("branchynet", "16", "4", "—"),
        ("eed", "16", "4", "1"),
        ("eed", "64", "4", "1"),
    ]


def test_the_best_main_cell_is_bold_not_only_coloured():
    """The mark must survive a terminal without colour, or a reader who cannot tell red: a * and bold."""
    from rich.console import Console

    table = build_table(
        [
            training_run("low", main=0.4),
            training_run("high", {"seed": "1"}, main=0.6),
            training_run("ce", {"method": "branchynet"}, main=0.45),
        ]
    )
    console = Console(force_terminal=True, width=120, color_system="standard")
    styles = {
        segment.text.strip(): segment.style
        for segment in console.render(table.rich_table())
        if segment.text.strip() in ("50.00*", "45.00")
    }  # eed (two seeds), best; branchynet
    assert styles["50.00*"] is not None and styles["50.00*"].bold
    assert styles["45.00"] is None or not styles["45.00"].bold
    assert "* (bold): the best main of its setup" in table.rich_table().caption


def test_eed_compare_prints_within_80_columns_on_an_80_column_screen(store, tmp_path, monkeypatch):
    """The command as a user sees it: the table, the settings common to all rows and the notes are
    wrapped at the screen's width, not left to the terminal to break mid-word."""
    uri, _ = store
    result = invoke_compare(uri, [], tmp_path, monkeypatch, columns=80)
    assert result.exit_code == 0, result.output
    table_and_notes = result.output[: result.output.index("Wrote ")]  # (the file paths may run longer)
    assert "Common to all rows:" in table_and_notes and "note:" in table_and_notes
    assert max(map(len, table_and_notes.splitlines())) <= 80, table_and_notes


def test_compare_reads_whole_at_80_columns():
    """At 80 columns nothing is cut (no "branc…", "Ense…"): each cell's mean over its ± std, short column
    titles with a legend, setting values folded, the shared settings as a wrapped paragraph."""
    from rich.console import Console

    table = build_table(
        [
            training_run("low", main=0.4),
            training_run("high", {"seed": "1"}, main=0.6),
            training_run("ce", {"method": "branchynet"}, main=0.45),
            training_run("t", {"loss.teacher": "[1, 3, 'main']", "model.width": "64"}, main=0.47),
        ]
    )
    console = Console(width=80, record=True, color_system=None)
    console.print(table.rich_table())
    console.print(table.constant_line(), highlight=False)
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80, text
    assert "branchynet" in text and "[1, 3, 'main']" in text and "50.00*" in text and "±14.14" in text
    assert " ".join(text.split()).count("train.weight_decay=0.0005") == 1


def test_the_differences_read_whole_at_80_columns():
    """At 80 columns, with five outputs and wide intervals, every row's label, reference and n and every
    interval are printed whole (no column dropped, no "[-12.16, +7.…")."""
    from rich.console import Console

    from eed.reporting.differences import differences, rich_table

    columns = {"exit1": 0.1, "exit2": 0.2, "exit3": 0.3, "ensemble": 0.35}
    runs = [
        RunRecord(
            f"{method}{seed}",
            {**BASE, "method": method, "seed": str(seed)},
            {},
            {
                f"test/acc_{name}": value + (0.1 if method == "eed" and seed else -0.05 * seed)
                for name, value in {**columns, "main": 0.4}.items()
            },
        )
        for method in ("branchynet", "eed", "distill")
        for seed in range(3)
    ]
    table = build_table(runs)
    found = differences(table)
    console = Console(width=80, record=True, color_system=None)
    console.print(rich_table(found, table.columns))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80, text
    flat = " ".join(text.split())
    for item in found:
        assert item.row.key["method"] in flat and "branchynet" in flat
        for difference in item.outputs.values():
            assert f"{100 * difference.low:+.2f}," in text and f"{100 * difference.high:+.2f}]" in text, text


def texts_inside_the_canvas(figure) -> tuple:
    """Draw ``figure``; assert every visible text lies inside its canvas (none clipped at an edge);
    return the renderer and the texts."""
    figure.canvas.draw()
    renderer, canvas = figure.canvas.get_renderer(), figure.bbox
    texts = [text for text in figure.findobj(matplotlib.text.Text) if text.get_visible() and text.get_text().strip()]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert canvas.x0 - 1 <= extent.x0 and extent.x1 <= canvas.x1 + 1, text.get_text()[:60]
        assert canvas.y0 - 1 <= extent.y0 and extent.y1 <= canvas.y1 + 1, text.get_text()[:60]
    return renderer, texts


def test_the_comparison_figure_keeps_every_text_inside_its_canvas_and_apart():
    """The settings line, the legend and the titles lie inside the saved canvas (none clipped at an edge)
    and the legend overlaps no other text."""
    from eed.reporting.figures import _build_comparison

    table = build_table(
        [
            training_run("low", main=0.4),
            training_run("high", {"seed": "1"}, main=0.6),
            training_run("ce", {"method": "branchynet"}, main=0.45),
            training_run("t", {"loss.teacher": "[1, 3, 'main']", "model.width": "64"}, main=0.47),
        ]
    )
    figure = _build_comparison(table, caption="eed · resnet18 width 16 · cifar100")
    renderer, texts = texts_inside_the_canvas(figure)
    assert any("train.weight_decay=0.0005" in text.get_text() for text in texts)
    (legend,) = figure.findobj(matplotlib.legend.Legend)
    box = legend.get_window_extent(renderer)
    inside = set(legend.get_texts()) | {legend.get_title()}
    for text in texts:
        if text not in inside:
            assert not box.overlaps(text.get_window_extent(renderer)), text.get_text()[:60]


def test_the_differences_figure_keeps_every_text_inside_its_canvas_and_apart():
    """Long row labels go in a legend below the axes, inside the canvas; no text overlaps another."""
    from eed.reporting.differences import differences
    from eed.reporting.figures import _build_differences

    runs = [
        training_run(f"{method}{seed}", {"method": method, "seed": str(seed), **teacher}, main=0.4 + 0.01 * seed)
        for method, teacher in [
            ("branchynet", {}),
            ("eed", {}),
            ("eed", {"loss.teacher": "[1, 3, 'main']"}),
            ("distill", {}),
        ]
        for seed in range(3)
    ]
    table = build_table([*runs, training_run("byot", {"method": "byot", "seed": "7"})])
    found = differences(table)
    assert len(found) == 4
    figure = _build_differences(found, table.columns, ["Main"], caption="resnet18 width 16 · cifar100")
    renderer, texts = texts_inside_the_canvas(figure)
    assert any("Teacher=[1, 3, 'main']" in text.get_text() for text in texts)
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in texts]
    for i, (name, box) in enumerate(boxes):
        assert not any(box.overlaps(other) for _, other in boxes[i + 1 :]), name[:60]
