"""Diagnostic (not one of the published benchmarks): why the training loop falls behind a bare
step on a 2-core CPU. ``python bench/run.py threads``.

The same measurement as ``train_overhead`` (``eed.engine.loops.train_one_epoch`` on the real loader
vs a bare forward+loss+backward+SGD step, ``--steps`` steps each) in several configurations
that can only differ between processes (thread counts and threading-layer environment
variables are read when torch / numba start). One worker process per configuration is
started and kept; the driver then runs one round in each worker after the other, rotating the
order, so that the configurations are interleaved in time like the variants of the other
benchmarks. Per configuration: median of per-round ratios (bare seconds / project seconds),
and the project loop's img/s, also as a ratio to the first configuration's in the same round.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS: dict[str, dict] = {
    "ffcv, 2 threads, 2 loader threads (before)": {"backend": "ffcv", "threads": 2, "workers": 2, "env": {}},
    "ffcv, 1 thread": {"backend": "ffcv", "threads": 1, "workers": 2, "env": {}},
    "tensor, 2 threads": {"backend": "tensor", "threads": 2, "env": {}},
    "ffcv, 2 threads, 1 loader thread (the default now)": {"backend": "ffcv", "threads": 2, "workers": 1, "env": {}},
    "ffcv, 2 threads, NUMBA_THREADING_LAYER=workqueue": {
        "backend": "ffcv",
        "threads": 2,
        "workers": 2,
        "env": {"NUMBA_THREADING_LAYER": "workqueue"},
    },
    "ffcv, 2 threads, OMP_WAIT_POLICY=PASSIVE": {
        "backend": "ffcv",
        "threads": 2,
        "workers": 2,
        "env": {"OMP_WAIT_POLICY": "PASSIVE"},
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=16, help="training steps per round and variant (default 16)")
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated indices into the configuration list (default: all): "
        + "; ".join(f"{i}={name}" for i, name in enumerate(CONFIGS)),
    )


def worker(spec: dict, prepared: str, steps: int) -> None:
    """Serves rounds on stdin ("round N") until EOF; one JSON line per round on stdout."""
    import copy
    import statistics
    import time

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import common
    from eed.engine.loops import train_one_epoch

    cfg = common.config(
        prepared,
        f"data.backend={spec['backend']}",
        f"data.train_subset={steps * 128}",
        "train.epochs=1000",
        f"data.num_workers={spec.get('workers', 1)}",
    )
    setup = common.training_setup(cfg, spec["threads"])  # the trainer's set-up: network, loaders, SGD, schedule
    loader, model, objective, runtime = setup.train_loader, setup.train_model, setup.objective, setup.runtime
    optimizer, scheduler = setup.optimizer, setup.scheduler
    loader.warmup(show_status=False)
    # The bare loop's own copy of the network and its SGD (copied together, so that the copied
    # optimizer steps the copied parameters): same initial weights and settings.
    bare_model, bare_optimizer = copy.deepcopy((setup.model, setup.optimizer))
    x, y = next(iter(loader))
    x, y = x.clone(), y.clone()
    names = setup.classifier_names

    def project(epoch: int) -> tuple[float, list[float]]:
        marks = [time.perf_counter()]

        def after_step() -> bool:
            marks.append(time.perf_counter())
            return False

        loader.set_epoch(epoch)
        train_one_epoch(
            model,
            objective,
            loader,
            optimizer,
            scheduler,
            runtime,
            epoch=epoch,
            classifier_names=names,
            should_stop=after_step,
        )
        return time.perf_counter() - marks[0], [b - a for a, b in itertools.pairwise(marks)]

    def bare() -> tuple[float, list[float]]:
        marks = [time.perf_counter()]
        for _ in range(steps):
            loss = objective(bare_model(x), y).total
            bare_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare_optimizer.step()
            marks.append(time.perf_counter())
        return marks[-1] - marks[0], [b - a for a, b in itertools.pairwise(marks)]

    project(0)
    bare()
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        epoch = int(line.split()[1])
        if epoch % 2:
            b, bare_steps = bare()
            p, project_steps = project(epoch)
        else:
            p, project_steps = project(epoch)
            b, bare_steps = bare()
        print(
            json.dumps(
                {
                    "project_s": p,
                    "bare_s": b,
                    "project_step": statistics.median(project_steps),
                    "bare_step": statistics.median(bare_steps),
                }
            ),
            flush=True,
        )


def run(args: argparse.Namespace):
    import statistics

    from bench import common

    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    names = list(CONFIGS)
    if args.configs:
        names = [names[int(i)] for i in args.configs.split(",")]
    steps = 4 if args.quick and args.steps == 16 else args.steps
    workers = {}
    for name in names:
        spec = CONFIGS[name]
        env = {**os.environ, **spec["env"]}
        workers[name] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(spec), str(prepared), str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        # Start-up (imports, FFCV compile) one at a time, so that no worker compiles during another's round.
        ready = json.loads(workers[name].stdout.readline())
        assert ready["ready"], ready
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    try:
        for round_index in range(args.repeats):
            gate()
            for name in common.rotate(names, round_index):
                process = workers[name]
                process.stdin.write(f"round {round_index + 1}\n")
                process.stdin.flush()
                rounds[name].append(json.loads(process.stdout.readline()))
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=60)
    images = steps * 128
    first = names[0]
    rows = []
    for name in names:
        ratio = [r["bare_s"] / r["project_s"] for r in rounds[name]]
        rows.append(
            common.Row(
                f"{name}: project ÷ bare",
                common.Stat(ratio),
                "×",
                note=f"per-step medians: {statistics.median(r['bare_step'] / r['project_step'] for r in rounds[name]):.3f}",
            )
        )
    for name in names:
        rows.append(
            common.Row(f"{name}: project loop", common.Stat([images / r["project_s"] for r in rounds[name]]), "img/s")
        )
    for name in names[1:]:
        speed = [a["project_s"] / b["project_s"] for a, b in zip(rounds[first], rounds[name])]
        rows.append(common.Row(f"{name}: project loop speed ÷ first config's", common.Stat(speed), "×"))
    return common.Result(
        name="threads",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": "per configuration",
            "steps": steps,
            "repeats": args.repeats,
            "configs": {n: CONFIGS[n] for n in names},
        },
        details={"rounds": rounds},
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        worker(json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: python bench/run.py threads [options]")
