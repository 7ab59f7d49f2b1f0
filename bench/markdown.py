"""``python bench/run.py markdown``: the results table of BENCHMARKS.md, from the JSON files in
bench/results/ (the latest run of each benchmark), printed to stdout for pasting."""

from __future__ import annotations

import json

from bench import common

ORDER = ("loaders", "train_overhead", "objective", "evaluation", "early_exit", "memory", "serving")


def rows() -> list[str]:
    lines = [
        "| benchmark | metric | median | min–max | unit | target | met? | command | machine | date |",
        "|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        path = common.RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        m = result["machine"]
        where = f"{m['cpu']}, {m['cores']} cores, {result['settings'].get('threads', '-')} torch threads"
        for row in result["rows"]:
            met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
            lines.append(
                f"| {name} | {row['metric']} | {common.fmt(row['median'], row['unit'])} | "
                f"{common.fmt(row['min'], row['unit'])}–{common.fmt(row['max'], row['unit'])} | "
                f"{row['unit']} | {row['target']} | {met} | `{result['command']}` | {where} | {m['date']} |"
            )
    return lines


def main() -> None:
    print("\n".join(rows()))
