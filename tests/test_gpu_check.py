"""The GPU check's dry mode (bench/gpu_check.py --dry): every step's logic on the CPU with tiny
sizes, on a balanced subset of the real CIFAR-100, as a subprocess, so that the script is known
to work before GPU time is spent on it."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("cuda_tests", "prepare", "race", "grid")
VARIANTS = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")


@pytest.mark.slow
def test_dry_run_writes_every_step_to_json_and_markdown(tmp_path, cifar100_root):
    out, work = tmp_path / "out", tmp_path / "work"
    run = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--dry",
            "--out",
            str(out),
            "--work",
            str(work),
            "--data-root",
            str(cifar100_root),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]  # (its speed is bench's, not a test's)

    report = json.loads((out / "gpu_check-dry.json").read_text())
    assert report["dry"] is True and list(report["steps"]) == list(STEPS)
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step.get("error"))
        assert 0 < step["seconds"] <= step["limit_s"] and step["rows"], name
        for row in step["rows"]:
            assert all(math.isfinite(row[key]) and row[key] >= 0 for key in ("median", "min", "max")), row
    rows = {row["metric"]: row for step in report["steps"].values() for row in step["rows"]}

    # CUDA tests: collected and, without a GPU, every one skipped with its reason.
    tests = report["steps"]["cuda_tests"]
    assert rows["CUDA tests collected"]["median"] == len(tests["details"]["cases"]) >= 8
    assert rows["CUDA tests skipped"]["median"] == rows["CUDA tests collected"]["median"]
    assert all("CUDA" in case["message"] for case in tests["details"]["cases"])
    # Prepare: a real, balanced subset (5 + 2 images per class), through eed.data.prepare.
    assert report["steps"]["prepare"]["details"]["splits"] == {"train": 500, "test": 200}
    # Race: every variant measured after its warm-up, ratios per round, extrapolations, syncs.
    race = report["steps"]["race"]
    for variant in VARIANTS:
        assert rows[f"{variant} img/s"]["median"] > 0 and race["details"]["warmup_s"][variant] > 0
        assert len(race["details"]["syncs"][variant]["per_step"]) == 3  # one count after every step
        assert rows[f"host syncs per step outside the render interval, {variant}"]["target"] == "<= 0"
    epoch = rows["paper epoch (50,000 images), bf16+channels_last"]
    # Per round 50,000 / img/s (with an even number of rounds the median of the inverses is not
    # the inverse of the median, and on a loaded machine the two differ by far more than noise).
    per_round = [50_000 / value for value in rows["bf16+channels_last img/s"]["values"]]
    assert epoch["median"] == pytest.approx(statistics.median(per_round))
    assert rows["paper run (200 epochs, with test passes), bf16+channels_last"]["median"] > 200 * epoch["median"] / 60
    assert rows["bf16+channels_last ÷ fp32 img/s"]["target"] == ">= 2"
    # Grid: k = 2 real trainings each way, the ratio of their times.
    grid = report["steps"]["grid"]["details"]
    assert (
        [r["method"] for r in grid["sequential"]]
        == [r["method"] for r in grid["concurrent"]]
        == ["baseline", "branchynet"]
    )
    ratio = rows["grid throughput, 2 at once ÷ one after another"]["median"]
    assert ratio == pytest.approx(
        rows["grid: 2 trainings one after another"]["median"] / rows["grid: 2 trainings at once"]["median"]
    )

    markdown = (out / "gpu_check-dry.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + sum(len(step["rows"]) for step in report["steps"].values())
    for name in STEPS:
        assert any(line.startswith(f"| {name} | ok") for line in table), name
    for metric in (
        "bf16+channels_last ÷ fp32 img/s",
        "paper epoch (50,000 images), bf16+channels_last",
        "grid throughput, 2 at once ÷ one after another",
        "CUDA tests skipped",
    ):
        assert any(f"| {metric} |" in line for line in table), metric
