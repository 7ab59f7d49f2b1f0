"""Paired differences (``eed compare --against``): the intervals against values computed by hand
(the t quantiles from scipy), which row is compared with which, and "no interval" where there
is none to give."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t

from eed.metrics.intervals import paired_difference, seed_difference, welch_difference
from eed.reporting.comparison import build_table
from eed.reporting.differences import differences, format_difference, to_markdown, write_csv
from tests.test_compare import training_run


def test_the_paired_interval_is_students_t_on_the_per_seed_differences():
    # d = 0.02, 0.01, 0.04: mean 0.023333, sample sd 0.015275, se 0.0088192, t(0.975, 2) = 4.302653
    difference = paired_difference([0.02, 0.01, 0.04])
    assert difference.pairing == "paired" and difference.n == 3
    assert difference.mean == pytest.approx(0.0233333, abs=1e-7)
    assert (difference.low, difference.high) == (
        pytest.approx(-0.0146125, abs=1e-6),
        pytest.approx(0.0612792, abs=1e-6),
    )
    assert not difference.excludes_zero


def test_welchs_interval_uses_the_welch_satterthwaite_degrees_of_freedom():
    # mean 0.72 - 0.605; se² = 0.0004/3 + 0.00005/2; ν = se⁴ / ((0.0004/3)²/2 + (0.00005/2)²/1) = 2.6350
    a, b = [0.70, 0.72, 0.74], [0.60, 0.61]
    se2 = 0.0004 / 3 + 0.00005 / 2
    freedom = se2**2 / ((0.0004 / 3) ** 2 / 2 + (0.00005 / 2) ** 2)
    assert freedom == pytest.approx(2.635, abs=1e-3)
    half = t.ppf(0.975, freedom) * math.sqrt(se2)
    difference = welch_difference(a, b)
    assert difference.pairing == "welch" and difference.mean == pytest.approx(0.115)
    assert (difference.low, difference.high) == (pytest.approx(0.115 - half), pytest.approx(0.115 + half))
    assert difference.excludes_zero


def test_seeds_choose_the_interval_and_one_pair_gives_none():
    paired = seed_difference({"0": 0.7, "1": 0.8, "2": 0.75}, {"0": 0.6, "1": 0.7, "5": 0.1})
    assert paired.pairing == "paired" and paired.n == 2 and paired.mean == pytest.approx(0.1)
    welch = seed_difference({"0": 0.7, "1": 0.8}, {"5": 0.6, "6": 0.65})
    assert welch.pairing == "welch" and welch.mean == pytest.approx(0.125)
    single = seed_difference({"0": 0.7}, {"0": 0.6, "1": 0.65})
    assert single.pairing == "none" and single.n == 1 and not single.has_interval
    assert single.mean == pytest.approx(0.1)  # the one shared seed's pair, not the means
    assert format_difference(single) == "+10.00"  # no ± made up


MAIN = {  # method (and teacher) -> seed -> test/acc_main
    "branchynet": {"0": 0.760, "1": 0.764, "2": 0.757},
    "eed": {"0": 0.781, "1": 0.779, "2": 0.786},
    "distill": {"0": 0.770, "1": 0.761},
    "byot": {"3": 0.700},
    "eed [1, 'main']": {"0": 0.777, "1": 0.772, "2": 0.790},
}


def runs() -> list:
    found = []
    for name, seeds in MAIN.items():
        method, _, teacher = name.partition(" ")
        for seed, main in seeds.items():
            changes = {"method": method, "seed": seed, **({"loss.teacher": teacher} if teacher else {})}
            found.append(training_run(f"{name}-{seed}", changes, main=main))
    return found


def expected(row: str, reference: str) -> tuple[float, float, float]:
    shared = [seed for seed in MAIN[row] if seed in MAIN[reference]]
    d = [MAIN[row][seed] - MAIN[reference][seed] for seed in shared]
    half = t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return statistics.mean(d), statistics.mean(d) - half, statistics.mean(d) + half


def by_row(found: list) -> dict:
    """method (and teacher subset) -> its RowDifference"""
    return {
        item.row.key["method"]
        + ("" if item.row.key["loss.teacher"] in ("all", "—") else f" {item.row.key['loss.teacher']}"): item
        for item in found
    }


def test_each_row_is_compared_with_the_reference_method_and_a_teacher_subset_with_all(tmp_path):
    table = build_table(runs())
    found = by_row(differences(table))  # default: against branchynet
    assert {name: item.against for name, item in found.items()} == {
        "eed": "branchynet",
        "eed [1, 'main']": "teacher all",
        "distill": "branchynet",
        "byot": "branchynet",
    }
    for row, reference in [("eed", "branchynet"), ("distill", "branchynet"), ("eed [1, 'main']", "eed")]:
        main = found[row].outputs["main"]
        assert main.pairing == "paired" and main.n == len(set(MAIN[row]) & set(MAIN[reference]))
        assert (main.mean, main.low, main.high) == pytest.approx(expected(row, reference))
    eed = found["eed"].outputs["main"]
    assert eed.excludes_zero and format_difference(eed) == "+2.17* [+0.42, +3.91]"
    byot = found["byot"]  # seed 3 only, which branchynet never ran
    assert (
        byot.pairing == "none" and byot.n == 1 and byot.outputs["main"].mean == pytest.approx(0.7 - 0.760333, abs=1e-6)
    )

    markdown = to_markdown(list(found.values()), table.columns)
    assert f"| {byot.row.label} | branchynet | 1 | n = 1, no interval | -6.03 |" in markdown
    assert f"| {found['eed'].row.label} | branchynet | 3 | paired by seed | +2.17* [+0.42, +3.91] |" in markdown
    lines = write_csv(list(found.values()), table.columns, tmp_path / "d.csv").read_text().splitlines()
    assert lines[0] == "row,against,pairing,n,main_diff_pts,main_low_pts,main_high_pts"
    assert any(
        line.startswith(f'"{byot.row.label}",branchynet,none,1,-6.0333') and line.endswith(",,") for line in lines
    ), lines


def test_against_another_method_and_no_reference_means_no_rows():
    table = build_table(runs())
    found = by_row(differences(table, "distill"))
    assert found["eed"].against == "distill" and found["byot"].against == "distill"
    assert "distill" not in found and "branchynet" in found and found["eed [1, 'main']"].against == "teacher all"
    without = build_table([run for run in runs() if run.params["method"] != "branchynet"])
    assert [item.against for item in differences(without)] == ["teacher all"]  # no branchynet: no default
