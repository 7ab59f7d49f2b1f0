"""2. Training-loop overhead: the project's training loop vs a bare step, same model and batch.

``project`` is one epoch of ``eed.engine.trainer.train`` minus its validation, made of the project's
own functions: ``loader.set_epoch``, ``eed.engine.loops.train_one_epoch`` (the real FFCV train
loader of params.yaml, ``ExitEnsembleObjective``, the non-finite check, SGD + the LR
schedule, per-step loss terms and per-classifier accuracy, the progress bar rendered as on a
terminal every ``eed.progress.REFRESH_S``, into /dev/null), then ``eed.engine.epochs.epoch_metrics``,
the MLflow ``log_batch`` (``MlflowLogger.log_metrics``, sqlite store under bench/results/) and the
``last.pt`` checkpoint write (``TrainState.to_checkpoint(...).save``, as the trainer writes it).
Model, objective, optimizer, schedule and loader are the trainer's own set-up
(``eed.engine.setup.build_training``: the network with params.yaml's init and stem). An epoch
has the length of a real epoch of params.yaml (156 steps of 128 at the cpu preset) unless
``--steps`` asks for fewer (``data.train_subset`` = steps x 128); shorter epochs spread the
per-epoch costs over fewer steps, a lower bound.

``bare`` is ``model(x)``, the same objective (method eed) on its output, ``zero_grad``,
``backward``, ``SGD.step`` on one batch held in memory (taken from the same loader), for the
same number of steps: what a minimal hand-written loop does per step. Both variants train the
same model with the same optimizer: two copies of one network ran up to 5 % apart in speed
here (where each copy's memory lies), more than the effect measured.

Both run resnet18 width 16, method eed, batch 128, fp32 on CPU, with the same torch thread
count, interleaved round by round. Ratio per round = bare seconds / project seconds
(= project img/s ÷ bare img/s).

Also reported, because on a 2-core machine shared with other jobs the direct ratio swings
far more than the effect measured: the loop's own per-step work timed piece by piece (taking
a ready batch from the loader, ``batch_correct``, the loss-term sums, the non-finite check,
``scheduler.step``, the progress-bar render, per step) and the ratio derived from it,
bare step / (bare step + that work). This is the overhead the loop's code adds; the gap
between it and the direct ratio is contention (other processes, FFCV's worker threads
competing with torch's for the same cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics

import torch

from bench import common

TARGET = 0.95
BEFORE = "project, as before the fix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per timed epoch (default: a real epoch of params.yaml, 156 steps)",
    )
    parser.add_argument(
        "--backend",
        choices=("ffcv", "tensor"),
        default="ffcv",
        help="data.backend of the project loop (default ffcv, as params.yaml)",
    )
    parser.add_argument(
        "--compare-before",
        action="store_true",
        help="also time the loop as it was before the fix of BENCHMARKS.md finding 3: 2 FFCV "
        "loader threads and a Rich bar refreshed by its own thread",
    )
    parser.add_argument(
        "--compare-threads",
        action="store_true",
        help="also time the bare step at torch's default thread count (what the process would "
        "use if importing FFCV did not change it)",
    )


def _loop_pieces(
    model, objective, loader, scheduler, x, y, names, runtime, step_seconds: float, repeats: int = 50
) -> dict[str, float]:
    """Median seconds per step of each piece of work ``train_one_epoch`` does besides the
    forward, loss, backward and optimizer step (see the module docstring)."""
    import time

    from eed.engine.loops import batch_correct

    with torch.no_grad():
        output = model(x)
    result = objective(output, y)
    loss = result.total

    def median_time(function, inner: int = 20) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(inner):
                function()
            times.append((time.perf_counter() - start) / inner)
        return statistics.median(times)

    def accumulate() -> None:
        term_sums: dict = {}
        for name, value in result.terms.items():
            term_sums[name] = term_sums.get(name, 0) + value.detach()
        term_sums["loss"] = term_sums.get("loss", 0) + loss.detach()

    correct = torch.zeros(len(names) + 1, dtype=torch.long)

    def count() -> None:
        correct.add_(batch_correct(output.logits, y))

    def finite() -> None:
        if not torch.isfinite(loss):
            raise AssertionError

    from rich.console import Console

    from eed.progress import REFRESH_S, progress_bar

    console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)  # noqa: SIM115
    with progress_bar(console) as progress:
        task = progress.add_task("epoch", total=100, info="")
        render = median_time(lambda: progress.update(task, completed=1, info=f"loss {loss.item():.3f}", refresh=True))

    # A ready batch: the producer has had a step's worth of time to prepare it.
    fetch = []
    iterator = iter(loader)
    try:
        for _ in range(min(len(loader) - 1, 8)):
            time.sleep(0.05)
            start = time.perf_counter()
            inputs, target = next(iterator)
            inputs.to(runtime.device, non_blocking=True), target.to(runtime.device, non_blocking=True)
            fetch.append(time.perf_counter() - start)
    finally:
        iterator.close()
    lr_before = [group["lr"] for group in scheduler.optimizer.param_groups]
    step_lr = median_time(scheduler.step, inner=1)
    for group, lr in zip(scheduler.optimizer.param_groups, lr_before):
        group["lr"] = lr
    return {
        "batch handoff": statistics.median(fetch),
        "batch_correct": median_time(count),
        "loss-term sums": median_time(accumulate),
        "non-finite check": median_time(finite),
        "scheduler.step": step_lr,
        f"progress bar (a render every {REFRESH_S} s)": render * step_seconds / REFRESH_S,
    }


def run(args: argparse.Namespace) -> common.Result:
    from rich.console import Console

    from eed import tracking
    from eed.data import make_loader
    from eed.engine.checkpoint import TrainState
    from eed.engine.epochs import epoch_metrics
    from eed.engine.loops import train_one_epoch
    from eed.progress import progress_bar

    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    batch = 128
    real_epoch = (common.config(prepared).data.train_subset or 45_000) // batch  # 0 = the whole train split
    steps = args.steps or (4 if args.quick else real_epoch)
    mlflow_dir = common.RESULTS / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    cfg_overrides = (
        f"data.backend={args.backend}",
        f"data.train_subset={steps * batch}",
        f"train.batch_size={batch}",
        f"train.epochs={2 * args.repeats + 2}",
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{mlflow_dir / 'mlflow.db'}",
        "tracking.experiment=bench",
    )
    setup = common.training_setup(common.config(prepared, *cfg_overrides), threads)
    cfg, runtime, loader = setup.config, setup.runtime, setup.train_loader
    assert len(loader) == steps, (len(loader), steps)
    model, objective, optimizer, scheduler = setup.train_model, setup.objective, setup.optimizer, setup.scheduler
    names = setup.classifier_names

    tracking_uri = tracking.resolve_tracking_uri(cfg)
    tracking.check_tracking_uri(tracking_uri)
    logger = tracking.MlflowLogger.for_training(cfg, tracking_uri)
    last_path = common.RESULTS / "train_overhead" / "last.pt"
    history: dict[str, list[tuple[int, float]]] = {}  # the trainer's last.pt records every epoch's metrics
    # The progress bar as on a terminal (rendered and refreshed), written to /dev/null.
    console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)  # noqa: SIM115

    loader.warmup(show_status=False)
    loader_before = None
    if args.compare_before:
        loader_before = make_loader(
            common.config(prepared, *cfg_overrides, "data.num_workers=2"), "train", train=True, device=runtime.device
        )
        torch.set_num_threads(threads)
        loader_before.warmup(show_status=False)
    x, y = next(iter(loader))
    x, y = x.clone(), y.clone()

    step_times: dict[str, list[float]] = {"project": [], "bare": [], "bare@default threads": [], BEFORE: []}
    epoch_costs: dict[str, list[float]] = {"log_epoch": [], "write_last": []}

    def project(epoch: int, record: str = "project", epoch_loader=loader, bar=None) -> None:
        marks = [common.now()]

        def after_step() -> bool:  # train_one_epoch calls it after every step
            marks.append(common.now())
            return False

        epoch_loader.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            objective,
            epoch_loader,
            optimizer,
            scheduler,
            runtime,
            epoch=epoch,
            classifier_names=names,
            should_stop=after_step,
            progress=bar or progress,
        )
        t0 = common.now()
        metrics = epoch_metrics(stats, None, {}, optimizer.param_groups[0]["lr"])
        logger.log_metrics(metrics, epoch)
        t1 = common.now()
        for name, value in metrics.items():  # as the trainer records an epoch
            history.setdefault(name, []).append((epoch, value))
        TrainState(epoch=epoch, history=history).to_checkpoint(
            setup.network, setup.model, cfg, setup.resume_state()
        ).save(last_path)
        t2 = common.now()
        if epoch > 0:
            step_times[record] += [b - a for a, b in itertools.pairwise(marks)]  # steady steps
            if record == "project":
                epoch_costs["log_epoch"].append(t1 - t0)
                epoch_costs["write_last"].append(t2 - t1)

    def project_before(epoch: int) -> None:
        from rich.progress import Progress

        with Progress(*progress.columns, console=console, transient=True) as thread_bar:  # auto-refresh thread
            project(epoch, BEFORE, loader_before, thread_bar)

    def bare(record: str | None, thread_count: int) -> None:
        torch.set_num_threads(thread_count)
        model.train()
        last = common.now()
        for _ in range(steps):
            output = model(x)
            loss = objective(output, y).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            now = common.now()
            if record:
                step_times[record].append(now - last)
            last = now
        torch.set_num_threads(threads)

    variants = {"project": None, "bare": threads}
    if args.compare_before:
        variants[BEFORE] = None
    compare_threads = args.compare_threads and threads != common.TORCH_DEFAULT_THREADS
    if compare_threads:
        variants["bare@default threads"] = common.TORCH_DEFAULT_THREADS

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with progress_bar(console) as progress:
        project(0)  # warm-up epoch: allocator, first MLflow write, page faults
        if args.compare_before:
            project_before(0)
        bare(None, threads)
        gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
        for round_index in range(args.repeats):
            gate()
            for name in common.rotate(list(variants), round_index):
                if name == "project":
                    elapsed, _ = common.timed(lambda: project(2 * round_index + 1))
                elif name == BEFORE:
                    elapsed, _ = common.timed(lambda: project_before(2 * round_index + 2))
                else:
                    elapsed, _ = common.timed(lambda: bare(name, variants[name]))
                seconds[name].append(elapsed)
    logger.finish("FINISHED")

    images = steps * batch
    ratio = [b / p for b, p in zip(seconds["bare"], seconds["project"])]
    per_step = statistics.median(step_times["bare"]) / statistics.median(step_times["project"])
    bare_step = statistics.median(step_times["bare"])
    pieces = _loop_pieces(model, objective, loader, scheduler, x, y, names, runtime, bare_step)
    intrinsic = sum(pieces.values())
    rows = [
        common.Row(
            "project loop",
            common.Stat([images / s for s in seconds["project"]]),
            "img/s",
            note=f"{steps}-step epochs incl. per-epoch logging + checkpoint",
        ),
        common.Row("bare step", common.Stat([images / s for s in seconds["bare"]]), "img/s"),
        common.target_row("project ÷ bare", ratio, ">=", TARGET),
        common.Row(
            "steady-state step: project ÷ bare",
            common.Stat([per_step]),
            "×",
            note="ratio of median per-step times (no per-epoch costs)",
        ),
        common.target_row(
            "project ÷ bare, derived from the loop's own per-step work",
            [bare_step / (bare_step + intrinsic)],
            ">=",
            TARGET,
            note=f"{1e3 * intrinsic:.2f} ms/step of loop work vs a {1e3 * bare_step:.0f} ms step",
        ),
        common.Row("per-epoch MLflow log_epoch", common.Stat([1e3 * v for v in epoch_costs["log_epoch"]]), "ms"),
        common.Row("per-epoch last.pt write", common.Stat([1e3 * v for v in epoch_costs["write_last"]]), "ms"),
    ]
    if args.compare_before:
        rows[3:3] = [
            common.Row(
                BEFORE,
                common.Stat([images / s for s in seconds[BEFORE]]),
                "img/s",
                note="2 FFCV loader threads, Rich bar with its refresh thread",
            ),
            common.Row(f"{BEFORE} ÷ bare", common.Stat([b / p for b, p in zip(seconds["bare"], seconds[BEFORE])]), "×"),
            common.Row(
                f"steady-state step: {BEFORE} ÷ bare",
                common.Stat([bare_step / statistics.median(step_times[BEFORE])]),
                "×",
            ),
            common.Row(
                "project ÷ project as before (speed-up of the fix)",
                common.Stat([b / p for b, p in zip(seconds[BEFORE], seconds["project"])]),
                "×",
            ),
        ]
    if compare_threads:
        thread_ratio = [b / d for b, d in zip(seconds["bare"], seconds["bare@default threads"])]
        rows.insert(
            2,
            common.Row(
                f"bare step @ {common.TORCH_DEFAULT_THREADS} threads",
                common.Stat([images / s for s in seconds["bare@default threads"]]),
                "img/s",
            ),
        )
        rows.append(
            common.Row(
                f"bare @ {common.TORCH_DEFAULT_THREADS} threads ÷ bare @ {threads}",
                common.Stat(thread_ratio),
                "×",
                note="speed-up if torch kept its default threads",
            )
        )
    return common.Result(
        name="train_overhead",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "torch_default_threads": common.TORCH_DEFAULT_THREADS,
            "steps": steps,
            "batch_size": batch,
            "repeats": args.repeats,
            "backend": args.backend,
            "arch": cfg.model.arch,
            "width": cfg.model.width,
            "method": cfg.method,
            "num_workers": cfg.data.num_workers,
        },
        details={
            "seconds": seconds,
            "median_step_s": {k: statistics.median(v) for k, v in step_times.items() if v},
            "step_s": {k: [round(t, 5) for t in v] for k, v in step_times.items() if v},
            "loop_work_ms_per_step": {k: 1e3 * v for k, v in pieces.items()},
        },
    )
