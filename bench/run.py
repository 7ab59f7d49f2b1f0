"""Benchmarks of eed on this machine: ``python bench/run.py <benchmark> [options]``.

Benchmarks (see bench/README.md): loaders, train_overhead, objective, evaluation,
early_exit, memory, serving, latency, or all of them in that order with ``all``. Each prints a Rich table
and writes ``bench/results/<benchmark>.json``; ``all`` also writes ``summary.json``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from pathlib import Path

# `python bench/run.py` puts bench/ on the path; the package is `bench`, from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

BENCHMARKS = {
    "loaders": "loader throughput: FFCV and tensor backends vs a torchvision DataLoader (target ≥ 5×)",
    "train_overhead": "the project's training loop vs a bare forward+backward+SGD step (target ≥ 0.95)",
    "objective": "step time of method eed vs branchynet (target ≤ 1.03)",
    "evaluation": "collect_outputs + summarize vs one forward pass (target ≤ 1.10)",
    "early_exit": "anytime.predict at the 1-point threshold vs the full network; GFLOPs/sample",
    "memory": "peak RSS of a training process (batch 128, default model)",
    "serving": "the served model at every rule's fitted thresholds vs the full network, batch 1, 8 and 128, eager "
    "and compiled, width 16 and 64 (goal: realised ÷ FLOPs speed-up ≥ 0.8)",
    "latency": "p50/p99 latency of single-image requests to `mlflow models serve` over loopback, eager vs compiled",
}
# Diagnostics: not part of `all`.
DIAGNOSTICS = {
    "threads": "diagnostic: the training loop vs a bare step under thread configurations (FFCV/numba vs torch/OpenMP)",
    "progress": "diagnostic: bare training steps with and without the trainer's live Rich progress bar",
}
DEFAULT_REPEATS = {
    "loaders": 7,
    "train_overhead": 5,
    "objective": 7,
    "evaluation": 15,
    "early_exit": 15,
    "memory": 2,
    "serving": 7,
    "latency": 1,
    "threads": 5,
    "progress": 12,
}


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = main.add_subparsers(dest="benchmark", required=True)
    sub.add_parser("markdown", help="print the results table (markdown) from bench/results/*.json")
    for name, help_text in [*BENCHMARKS.items(), ("all", "every benchmark above, in order"), *DIAGNOSTICS.items()]:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--repeats",
            type=int,
            default=None,
            help="rounds of interleaved measurements (default: per benchmark, "
            + ", ".join(f"{k} {v}" for k, v in DEFAULT_REPEATS.items())
            + ")",
        )
        p.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch intra-op threads for every variant (default: the count the project's "
            "own process runs with after building a loader)",
        )
        p.add_argument(
            "--prepared-dir",
            default=str(common.DEFAULT_PREPARED),
            help="where eed.data.prepare writes (or has written) CIFAR-100 (default bench/results/prepared)",
        )
        p.add_argument(
            "--quiet-budget",
            type=float,
            default=60,
            help="seconds in all a benchmark may wait, before its rounds, for other processes to "
            "calm down (default 60; 0 = never wait)",
        )
        p.add_argument(
            "--quiet-threshold",
            type=float,
            default=0.3,
            help="'quiet' = other processes use fewer cores than this (default 0.3)",
        )
        p.add_argument(
            "--quick", action="store_true", help="smaller sizes, for a smoke test (numbers not for publishing)"
        )
        if name != "all":  # `all` runs each benchmark with its own defaults
            module = importlib.import_module(f"bench.{name}")
            if hasattr(module, "add_arguments"):
                module.add_arguments(p)
    return main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.benchmark == "markdown":
        from bench import markdown

        markdown.main()
        return 0
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 140)
    run_all = args.benchmark == "all"
    names = list(BENCHMARKS) if run_all else [args.benchmark]
    explicit_repeats = args.repeats
    summary = []
    started = time.perf_counter()
    for name in names:
        if run_all:  # this benchmark's own options at their defaults, the common ones as given
            args = parser().parse_args([name, *argv[1:]])
        args.repeats = explicit_repeats or DEFAULT_REPEATS[name]
        if args.quick and explicit_repeats is None:
            args.repeats = 2
        args.command_line = "python bench/run.py " + " ".join(shlex.quote(a) for a in ([name, *argv[1:]]))
        module = importlib.import_module(f"bench.{name}")
        console.rule(f"[bold]{name}")
        machine = common.machine()  # load average and date at the start
        result = module.run(args)
        result.machine = machine
        if args.quick:  # smoke-test numbers never replace real ones
            result.name += "-quick"
        common.report(result, console)
        summary.append(result.to_dict())
    if run_all:
        import json

        common.RESULTS.mkdir(parents=True, exist_ok=True)
        path = common.RESULTS / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"[dim]wrote {path.relative_to(common.REPO)} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
