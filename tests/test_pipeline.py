"""The DVC pipeline end to end on a tiny synthetic configuration, in a fresh git+DVC repo:
`dvc repro`, a no-op second repro, `dvc exp run -S method=…` in the workspace (with
`train.nproc: 2`) and through the queue and with --temp (both run in a copy under .dvc/tmp/exps/; the --temp one changes an evaluation setting), `dvc exp show`, the MLflow runs,
and a misspelled `-S` key."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.dvc_project import ROOT, copy_of, env, first_run, run


@pytest.fixture(scope="module")
def repo_and_first_repro(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A new repository holding the project's pipeline with tiny params, after its first `dvc repro`
    (the session's one, shared with tests/test_sharing.py: a copy), and what that repro printed."""
    shared, first = first_run(tmp_path_factory)
    return copy_of(shared, tmp_path_factory.mktemp("pipeline") / "repo"), first


def all_runs(repo: Path) -> list:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("eed")
    return client.search_runs([experiment.experiment_id])


def runs(repo: Path) -> list:
    """The training runs."""
    return [r for r in all_runs(repo) if "mlflow.parentRunId" not in r.data.tags]


def evaluations(repo: Path) -> list:
    """The evaluate stage's runs (children of the training runs)."""
    return [r for r in all_runs(repo) if r.data.tags.get("eed.stage") == "evaluate"]


@pytest.mark.slow
def test_dvc_repro_then_experiments(repo_and_first_repro):
    repo, first = repo_and_first_repro
    out = repo / "outputs"
    for path in (
        "train/checkpoints/best.pt",
        "train/checkpoints/last.pt",
        "train/metrics.json",
        "train/history.csv",
        "evaluate/metrics.json",
        "evaluate/anytime.csv",
        "evaluate/figures/anytime.png",
        "evaluate/figures/agreement.png",
        "flops/flops.json",
        "flops/figures/flops.png",
        "rdm/rdm.json",
        "rdm/figures/rdm.png",
        "train/figures",
    ):
        assert (out / path).exists(), path
    evaluation = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert {"acc_exit1", "acc_main", "acc_ensemble"} <= set(evaluation["test"])
    assert_repro_ends_with_the_results(first, out, evaluation)
    assert_every_file_names_its_unit(out, evaluation)
    assert_only_the_intended_plots(repo)
    training_runs = runs(repo)
    assert len(training_runs) == 1 and training_runs[0].data.tags["method"] == "eed"
    assert training_runs[0].info.status == "FINISHED"

    second = run(["dvc", "repro"], repo)
    assert "didn't change" in second.stdout or "Data and pipelines are up to date" in second.stdout, second.stdout
    assert len(runs(repo)) == 1
    assert_stages_rerun_only_for_their_work(repo)

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    run(["dvc", "exp", "save", "-n", "eed-default"], repo)  # README: keep `make run`'s results as an experiment
    # Two processes (DDP through torchrun, gloo): the train stage relaunches itself; one run is logged.
    experiment = run(["dvc", "exp", "run", "-S", "method=branchynet", "-S", "train.nproc=2"], repo)
    assert "Running stage 'prepare'" not in experiment.stdout
    assert "Running stage 'train'" in experiment.stdout
    after = runs(repo)
    assert len(after) == 2
    branchynet = next(r for r in after if r.data.tags["method"] == "branchynet")
    assert_exp_show_fits_120_columns(repo)
    assert branchynet.data.tags.get("dvc_exp"), branchynet.data.tags
    assert branchynet.info.status == "FINISHED" and branchynet.data.params["train.nproc"] == "2"

    # A queued experiment runs in a copy under .dvc/tmp/exps/ and must log to the same store.
    run(["dvc", "exp", "run", "--queue", "-S", "method=distill"], repo)
    run(["dvc", "queue", "start", "--jobs", "1"], repo)
    _wait_for_queue(repo)
    assert {r.data.tags["method"] for r in runs(repo)} == {"eed", "branchynet", "distill"}
    # So does a --temp one (a relative core.site_cache_dir once broke it: no such folder in the copy); an
    # evaluation setting, so only the evaluation (and the report) runs again, from the cached checkpoint.
    run(["dvc", "exp", "run", "--temp", "-S", "eval.budgets=[0.002]"], repo)
    (evaluated,) = [r for r in evaluations(repo) if r.data.params["eval.budgets"] == "[0.002]"]
    assert evaluated.data.tags.get("dvc_exp") and evaluated.data.tags["method"] == "branchynet"  # (the workspace's)
    assert len(runs(repo)) == 3
    assert not (repo / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "results.json" in text and '"exit1"' in text and "branchynet" in text and "resolved.yaml" in text

    typo = run(["dvc", "exp", "run", "-S", "metohd=eed"], repo, check=False)
    assert typo.returncode != 0 and "metohd" in typo.stderr + typo.stdout

    bad_value = run(["dvc", "exp", "run", "-S", "method=eeed"], repo, check=False)
    assert bad_value.returncode != 0
    assert "method" in bad_value.stderr and "'eed'" in bad_value.stderr


def _wait_for_queue(repo: Path, timeout: float = 600) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            if "Failed" in status:
                raise AssertionError(f"queued experiment failed:\n{status}")
            return
        time.sleep(5)  # (each look is a `dvc` process: about a second of CPU)
    raise AssertionError("queued experiment did not finish")


def readme_exp_show_command() -> list[str]:
    """The `dvc exp show` command README.md gives for per-exit accuracies side by side."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("dvc exp show --drop")]
    return shlex.split(line, comments=True)


# What DVC prints after the last stage (README, "Quick start").
DVC_EPILOGUE = (
    "Updating lock file",
    "To track the changes with git",
    "git add",
    "To enable auto staging",
    "dvc config core.autostage",
    "Use `dvc push`",
)


def assert_repro_ends_with_the_results(completed: subprocess.CompletedProcess, out: Path, evaluation: dict) -> None:
    """`dvc repro` prints no warning, escape code or progress bar, and ends with the report stage's
    table (then DVC's own lines); results.json holds the headline numbers under short, unique keys
    and is the only metrics file; resolved.yaml the preset's values."""
    said = completed.stdout + completed.stderr
    for noise in ("Warning", "WARNING", "\x1b[", "\r", "Downloading artifacts", "CloudPickle"):
        assert noise not in said, (noise, said[-3000:])
    tail = completed.stdout[completed.stdout.rindex("Running stage 'report'") :]
    assert "Results on test" in tail and "early exit" in tail and "ensemble" in tail
    after_table = tail[tail.rindex("└") :].splitlines()[1:]
    caption = " ".join(
        line.strip() for line in after_table if line.strip() and not line.strip().startswith(DVC_EPILOGUE)
    )
    assert caption.startswith("max %: each output's best test top-1"), after_table  # the table's own caption
    results = json.loads((out / "results.json").read_text())
    assert results["test%"]["main"] == round(100 * evaluation["test"]["acc_main"], 2)
    assert set(results["test%"]) == {"exit1", "exit2", "exit3", "main", "ens"}
    assert set(results["gflops"]) == {"exit1", "exit2", "exit3", "main", "ens"}
    assert set(results["early_exit"]) == {"0_001gf", "guaranteed"}
    guaranteed = results["early_exit"]["guaranteed"]
    assert set(guaranteed) == {"test%", "gflops", "drop_pts", "held", "cost%"}
    # Its cost against the main output alone (no exit head), one of the options it was chosen from.
    main_only = evaluation["guaranteed"]["main_only_gflops"]
    assert guaranteed["cost%"] == round(100 * evaluation["guaranteed"]["gflops"] / main_only, 1)
    assert main_only == pytest.approx(evaluation["anytime"]["gflops_main"])
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert [name for name, stage in stages.items() if "metrics" in stage] == ["report"]
    resolved = yaml.safe_load((out / "resolved.yaml").read_text())["resolved"]
    assert resolved["train"] == {"epochs": 1, "schedule": "onecycle"}  # epochs set, schedule from the cpu preset
    assert resolved["model"]["width"] == 4 and resolved["loss"]["alpha"] == 1.0


PERCENT_MARKS = ("%", "_pct", "_pts", "percent")  # README, "Units": a number is a fraction unless its name says %
FRACTION_KEYS = ("acc", "top1", "top5", "ece", "frac", "accuracy", "drop", "bound")


def unit_of(path: tuple[str, ...]) -> str | None:
    """ "percent", "fraction" or "epoch" for a value at this key path (or CSV column), else None."""
    names = [str(part).lower() for part in path]
    if any(mark in name for name in names for mark in PERCENT_MARKS):
        return "percent"
    if "epoch" in names[-1] and "time" not in names[-1] and not names[-1].startswith(("test_epoch_", "val_epoch_")):
        return "epoch"
    words = set(names[-1].replace("/", "_").split("_"))
    return "fraction" if words & set(FRACTION_KEYS) and "loss" not in words else None


def leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for value in node:
            yield from leaves(value, path)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def assert_every_file_names_its_unit(out: Path, evaluation: dict) -> None:
    """Every number eed writes is a fraction unless its key or column says percent; epochs are
    integers. Checked on every JSON and CSV file of the run, then across files for one value."""
    import csv

    checked = {"percent": 0, "fraction": 0, "epoch": 0}
    for file in sorted([*out.rglob("*.json"), *out.rglob("*.csv")]):
        if file.suffix == ".json":
            values = list(leaves(json.loads(file.read_text())))
        else:
            values = [
                ((column,), float(cell))
                for row in csv.DictReader(file.open())
                for column, cell in row.items()
                if cell not in ("", None) and column not in ("split", "classifier")
            ]
        for path, value in values:
            unit = unit_of(path)
            if unit == "fraction":
                assert 0 <= value <= 1, (file.name, path, value)
            elif unit == "percent":  # (a cost in % of the main output's may pass 100 on test)
                assert 0 <= value <= (math.inf if "cost%" in path else 100), (file.name, path, value)
            elif unit == "epoch":
                assert float(value).is_integer() and value >= 1, (file.name, path, value)
            checked[unit] = checked.get(unit, 0) + 1
    assert all(checked[unit] > 0 for unit in ("percent", "fraction", "epoch")), checked
    # One value in two files each, in the unit its name says.
    main = evaluation["test"]["acc_main"]
    assert json.loads((out / "results.json").read_text())["test%"]["main"] == round(100 * main, 2)
    anytime = list(csv.DictReader((out / "evaluate" / "anytime.csv").open()))
    assert float(anytime[0]["threshold"]) == 0 and float(anytime[0]["frac_exit1"]) == 1  # every image leaves at exit 1
    assert float(anytime[0]["top1_pct"]) == pytest.approx(100 * evaluation["test"]["acc_exit1"], abs=1e-3)
    history = list(csv.DictReader((out / "train" / "history.csv").open()))
    per_epoch = [
        row
        for row in csv.DictReader((out / "train" / "accuracy.csv").open())
        if row["split"] == "test" and row["classifier"] == "main"
    ]
    assert float(per_epoch[-1]["top1_pct"]) == pytest.approx(100 * float(history[-1]["test_epoch_acc_main"]), abs=0.006)


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], repo).stdout))


def assert_stages_rerun_only_for_their_work(repo: Path) -> None:
    """Editing a figure module leaves train and prepare up to date (only the training curves, which
    the train stage logs as it goes, retrain); editing a backbone leaves prepare up to date. Each edit
    is undone before the next."""
    assert changed_stages(repo) == set()
    edits = {
        "eed/reporting/figures.py": ({"prepare", "train", "report"}, {"evaluate", "flops", "rdm"}),
        "eed/reporting/training_curves.py": ({"prepare", "evaluate"}, {"train", "report"}),
        "eed/models/cifar_resnet.py": ({"prepare"}, {"resolve", "train", "evaluate"}),
    }
    for module, (untouched, rerun) in edits.items():
        path = repo / module
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            changed = changed_stages(repo)
        finally:
            path.write_text(original)
        assert not changed & untouched and rerun <= changed, (module, changed)
    assert changed_stages(repo) == set()


def assert_only_the_intended_plots(repo: Path) -> None:
    """`dvc plots show` renders the per-classifier accuracy per epoch (colour = classifier,
    panel = split) and the early-exit curve, titled and labelled, and nothing else."""
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)
    plots = shown.get("data", shown)
    assert sorted(plots) == ["outputs/evaluate/anytime.csv", "outputs/train/accuracy.csv"], sorted(plots)
    for name, title in (
        ("outputs/train/accuracy.csv", "Accuracy of every classifier per epoch"),
        ("outputs/evaluate/anytime.csv", "Early-exit accuracy vs GFLOPs"),
    ):
        (plot,) = plots[name]
        assert plot["type"] == "vega"
        text = json.dumps(plot["content"])
        assert title in text
    spec = plots["outputs/train/accuracy.csv"][0]["content"]["spec"]
    assert spec["encoding"]["color"]["field"] == "classifier" and spec["encoding"]["x"]["axis"]["format"] == "d"
    # Experiments told apart by marker (one epoch draws no line) and dash, in one legend whose labels say
    # "rev main", not "main" as the classifier; DVC's strokeDash legend alone showed black dots alike.
    assert spec["encoding"]["shape"]["field"] == spec["encoding"]["strokeDash"]["field"] == "rev"
    assert (
        spec["encoding"]["strokeDash"]["legend"] is None
        and "'rev '" in spec["encoding"]["shape"]["legend"]["labelExpr"]
    )
    assert spec["encoding"]["y"]["title"] == "top-1 (%)"
    values = plots["outputs/train/accuracy.csv"][0]["content"]["data"]["values"]
    assert {row["classifier"] for row in values} == {"exit1", "exit2", "exit3", "main", "ensemble"}
    assert all(float(row["epoch"]).is_integer() for row in values)


def assert_exp_show_fits_120_columns(repo: Path) -> None:
    """README's command shows every experiment's per-output test accuracies within 120 columns."""
    command = readme_exp_show_command()
    completed = subprocess.run(
        [*command, "--no-pager"], cwd=repo, env={**env(), "COLUMNS": "120"}, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.rstrip().splitlines()
    assert max(len(line) for line in lines) <= 120, completed.stdout
    header = next(line for line in lines if "Experiment" in line).split()
    assert header == ["Experiment", *[f"test%.{name}" for name in ("exit1", "exit2", "exit3", "main", "ens")], "method"]
    assert "[eed-default]" in completed.stdout, completed.stdout  # the saved default run, beside the new one
    committed = json.loads(run(["git", "show", "HEAD:outputs/results.json"], repo).stdout)["test%"]
    experiment = json.loads((repo / "outputs" / "results.json").read_text())["test%"]  # the workspace: branchynet
    rows = {cells[-1]: cells[-6:-1] for cells in (line.split() for line in lines[3:]) if len(cells) >= 7}
    for method, values in (("eed", committed), ("branchynet", experiment)):
        assert rows[method] == [f"{values[k]:g}" for k in ("exit1", "exit2", "exit3", "main", "ens")], (
            method,
            completed.stdout,
        )
