"""The headline numbers: results.json's short keys and the results table `dvc repro` ends with."""

from __future__ import annotations

from rich.console import Console

from eed.reporting.headline import budget_key, headline, results_table

EVALUATION = {
    "test": {
        "acc_exit1": 0.1652,
        "acc_exit2": 0.1711,
        "acc_exit3": 0.1794,
        "acc_main": 0.1999,
        "acc_ensemble": 0.1839,
        "top5_exit1": 0.43,
        "top5_exit2": 0.44,
        "top5_exit3": 0.45,
        "top5_main": 0.47,
        "top5_ensemble": 0.45,
    },
    "running_ensemble": {"acc_upto_exit1": 0.1652},
    "num_samples": 10000,
    "anytime": {
        "gflops_exit1": 0.026862592,
        "gflops_exit2": 0.041280512,
        "gflops_exit3": 0.055698432,
        "gflops_main": 0.070116352,
        "gflops_ensemble": 0.084297216,
        "exit_rule": "confidence",  # the longest rule name
        "budget_0_035": {"threshold": 0.05, "accuracy": 0.1681, "gflops": 0.03481, "fit_accuracy": 0.16},
        "budget_0_0001": {"threshold": None, "accuracy": None, "gflops": None, "fit_accuracy": None},
    },
    "guaranteed": {
        "max_drop": 0.01,
        "delta": 0.1,
        "feasible": 1,
        "threshold": 0.43,
        "calibrated": 0,
        "val_drop": 0.002,
        "val_bound": 0.0095,
        "accuracy": 0.1931,
        "main_accuracy": 0.1999,
        "drop": 0.0068,
        "held": 1,
        "gflops": 0.0512,
        "main_only_gflops": 0.070116352,
    },
}
TRAINING = {"test_max_over_epochs": {"acc_exit1": 0.1652, "acc_main": 0.2011}}


def test_results_json_has_short_unique_keys_in_percent():
    results = headline(EVALUATION)
    assert results["test%"] == {"exit1": 16.52, "exit2": 17.11, "exit3": 17.94, "main": 19.99, "ens": 18.39}
    assert results["gflops"] == {"exit1": 0.02686, "exit2": 0.04128, "exit3": 0.0557, "main": 0.07012, "ens": 0.0843}
    assert results["early_exit"] == {
        "0_035gf": {"test%": 16.81, "gflops": 0.03481},
        "0_0001gf": {"test%": None, "gflops": None},
        "guaranteed": {"test%": 19.31, "gflops": 0.0512, "drop_pts": 0.68, "held": 1, "cost%": 73.0},
    }  # of the main output alone: 0.0512 / 0.0701
    assert budget_key(0.05) == "0_05gf" and "." not in budget_key(0.035)
    val = headline({"val": EVALUATION["test"], "anytime": {}, "num_samples": 5000})
    assert set(val) == {"val%", "gflops"}  # the split names the keys: never "test" for validation numbers


def test_results_table_fits_80_columns_whole():
    console = Console(width=80, record=True, color_system=None)
    console.print(results_table(EVALUATION, TRAINING, caption="eed · resnet18 width 16 · cifar100 · seed 0"))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    assert "19.99" in text and "20.11" in text and "≤ 0.0001 GF: no τ fits" in text and "≤ 0.035 GF, τ 0.05" in text
    assert "drop ≤ 1 pt, τ 0.43: held" in text and "19.31" in text and "early exit (confidence)" in text
    assert "Results on test (10000 images, best.pt)" in text
    (ensemble,) = [line.strip("│ ").split() for line in text.splitlines() if line.startswith("│ ensemble")]
    assert [cell for cell in ensemble if cell != "│"][3:5] == ["0.0843", "120"], (
        ensemble
    )  # every head as well as the main output: 120 % of main


def test_the_end_of_training_is_a_small_table_in_percent_with_integer_epochs():
    from eed.stages.train import test_table

    metrics = {
        "test/acc_exit1": 0.1705,
        "test/acc_main": 0.1999,
        "test/max_acc_exit1": 0.1752,
        "test/max_acc_main": 0.2011,
        "test/max_acc_epoch_exit1": 4.0,
        "test/max_acc_epoch_main": 3.0,
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(test_table(metrics))
    text = console.export_text()
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    }
    assert rows["exit1"] == ["17.05", "17.52 (4)"] and rows["main"] == ["19.99", "20.11 (3)"], text
    assert "0.1705" not in text and "4.0" not in text and max(map(len, text.splitlines())) <= 80
