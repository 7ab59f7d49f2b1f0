"""Diagnostic (not one of the published benchmarks): what the training progress bar costs.
``python bench/run.py progress``.

Bare training steps (the trainer's set-up, ``eed.engine.setup.build_training``: resnet18 width
16, eed, its SGD; batch 128, one random batch in memory), ``--steps`` per round, in three
variants interleaved round by round: no progress bar; a Rich bar with the trainer's columns
live on a terminal (``force_terminal``, written to /dev/null) refreshed by Rich's own thread
(10 renders per second; what the trainer did before); the trainer's bar
(``eed.progress.progress_bar``: no refresh thread) rendered between steps whenever
``eed.progress.RefreshClock`` says so, as ``train_one_epoch`` does. Ratio per round =
seconds without a bar / seconds with it.
"""

from __future__ import annotations

import argparse
import os

import torch

from bench import common

VARIANTS = ("no bar", "Rich bar, refresh thread", "eed.progress bar, rendered between steps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="steps per round and variant (default 10)")


def run(args: argparse.Namespace) -> common.Result:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from eed.progress import RefreshClock, progress_bar

    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    steps = 2 if args.quick and args.steps == 10 else args.steps
    setup = common.training_setup(common.config(prepared), threads)
    model, objective, optimizer = setup.train_model, setup.objective, setup.optimizer
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 32, 32, generator=generator).to(setup.runtime.device)
    y = torch.randint(0, setup.network.num_classes, (128,), generator=generator).to(setup.runtime.device)
    model.train()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )

    def train_steps(render=None) -> float:
        start = common.now()
        for step in range(steps):
            loss = objective(model(x), y).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if render is not None:
                render(step + 1, loss)
        return common.now() - start

    def thread_bar() -> float:
        console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)  # noqa: SIM115
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("epoch 1", total=steps, info="")
            return train_steps(
                lambda step, loss: (
                    step % 10 == 0 and progress.update(task, completed=step, info=f"loss {loss.item():.3f}")
                )
            )

    def eed_bar() -> float:
        console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)  # noqa: SIM115
        with progress_bar(console) as progress:
            task = progress.add_task("epoch 1", total=steps, info="")
            clock = RefreshClock()
            return train_steps(
                lambda step, loss: (
                    clock.due() and progress.update(task, completed=step, info=f"loss {loss.item():.3f}", refresh=True)
                )
            )

    variants = {"no bar": train_steps, VARIANTS[1]: thread_bar, VARIANTS[2]: eed_bar}
    train_steps()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    for round_index in range(args.repeats):
        gate()
        for name in common.rotate(list(variants), round_index):
            seconds[name].append(variants[name]())
    rows = [
        common.Row(
            f"no bar ÷ {name} (time)", common.Stat([a / b for a, b in zip(seconds["no bar"], seconds[name])]), "×"
        )
        for name in VARIANTS[1:]
    ]
    return common.Result(
        name="progress",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={"threads": threads, "steps": steps, "rounds": args.repeats},
        details={"seconds": seconds},
    )
