"""5. Early-exit inference: ``eed.inference.early_exit.predict`` at the threshold that keeps accuracy within
1 point of the main output, vs the full network.

The model: ``--checkpoint PATH`` (an eed checkpoint, e.g. ``outputs/train/checkpoints/best.pt``
after ``dvc repro``), else one trained here by ``eed.engine.trainer.train`` with params.yaml's
settings, i.e. the model ``dvc repro`` trains (resnet18 width 16, method eed, 20,000 real
CIFAR-100 training images, 4 epochs, one-cycle), on the tensor backend with MLflow off;
``--train-subset``/``--epochs`` shorten it. It is cached in bench/results/early_exit/ and
reused while the settings match; training (a few minutes, once) is not timed. (1-2 epochs
on 10,000 images give ~8% accuracy, where exit 1 is as good as the main output and the
chosen threshold degenerates to 0.)

Threshold: on the validation split, the cheapest tau of ``threshold_grid(101)`` whose
early-exit accuracy is at least the main output's accuracy minus 1 point (``anytime.sweep``
over the collected logits, anytime costs from ``eed.metrics.flops.profile_model``). Reported on the
test split: accuracy and average GFLOPs per sample at tau, from the same sweep.

Timing, on the test split in batches of 128, all under ``torch.inference_mode()`` in eval
mode; each round times every variant (order rotating) on the same ``--chunk`` consecutive
batches (default 20 = 2,560 images, walking through the split):

* ``early exit``: ``predict(model, x, tau)`` (really stops: samples that left are removed
  from the batch before the next stage);
* ``full network``: ``model.forward_main(x)`` (the trunk and the main head, no exits): what
  inference without early exit costs;
* ``all exits``: ``model(x)``: every exit and the main output (the multi-exit forward).

Ratio per round = early-exit img/s ÷ full-network img/s. The FLOPs ratio (main GFLOPs ÷
early-exit GFLOPs at tau) is the speed-up the cost model predicts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import common


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmarked model's options, shared by the benchmarks of the trained model (serving, latency)."""
    parser.add_argument("--checkpoint", default=None, help="an eed checkpoint to use instead of training one")
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="training images (default: params.yaml's, 20000 at the cpu preset)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: params.yaml's, 4)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--chunk", type=int, default=20, help="batches of 128 per round (default 20)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="accuracy the early exit may lose vs the main output on val (default 0.01 = 1 point)",
    )


def _trained_model(args: argparse.Namespace, prepared: Path, cfg):
    from eed.engine.checkpoint import Checkpoint
    from eed.engine.trainer import train
    from eed.models.from_config import resolve_architecture

    if args.checkpoint:
        checkpoint = Checkpoint.load(args.checkpoint)
        return checkpoint.model(), {"checkpoint": str(Path(args.checkpoint).resolve()), "trained_here": False}
    out_dir = common.RESULTS / "early_exit" / f"model-{cfg.data.train_subset}x{cfg.train.epochs}"
    best = out_dir / "checkpoints" / "best.pt"
    if best.is_file():
        checkpoint = Checkpoint.load(best)
        if checkpoint.config == resolve_architecture(cfg).model_dump():  # checkpoints hold the resolved config
            return checkpoint.model(), {"checkpoint": str(best), "trained_here": True, "reused": True}
    elapsed, result = common.timed(lambda: train(cfg, out_dir, resume=False))
    return Checkpoint.load(best).model(), {
        "checkpoint": str(best),
        "trained_here": True,
        "reused": False,
        "train_seconds": elapsed,
        "test_metrics": result.test_metrics,
    }


@dataclass
class TrainedModel:
    """The benchmarked model and what it was trained or loaded with (also bench/serving.py's)."""

    prepared: Path
    threads: int
    subset: int
    epochs: int
    cfg: Any
    model: Any
    source: dict[str, Any]


def trained_model(args: argparse.Namespace) -> TrainedModel:
    """The ``dvc repro`` model (trained once and cached, or ``--checkpoint``), in eval mode, with
    torch at the benchmark's thread count."""
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    preset = common.config(prepared)
    subset = args.train_subset or (2000 if args.quick else preset.data.train_subset)
    epochs = args.epochs or (1 if args.quick else preset.train.epochs)
    cfg = common.config(
        prepared,
        "data.backend=tensor",
        f"data.train_subset={subset}",
        f"train.epochs={epochs}",
        "method=eed",
        "train.device=cpu",
    )
    model, source = _trained_model(args, prepared, cfg)
    torch.set_num_threads(threads)
    return TrainedModel(prepared, threads, subset, epochs, cfg, model.eval(), source)


def _throughput(sizes: list[int], seconds: list[float]) -> common.Stat:
    return common.Stat([n / s for n, s in zip(sizes, seconds)])


def run(args: argparse.Namespace) -> common.Result:
    from eed.data import make_loader
    from eed.engine.loops import collect_outputs
    from eed.inference.early_exit import predict
    from eed.metrics.anytime import ClassifierCosts, sweep, threshold_grid
    from eed.metrics.flops import profile_model

    started = common.now()
    trained = trained_model(args)
    threads, subset, epochs, cfg, model, source = (
        trained.threads,
        trained.subset,
        trained.epochs,
        trained.cfg,
        trained.model,
        trained.source,
    )
    names = model.classifier_names()
    costs = ClassifierCosts.from_profile(profile_model(model, 32))

    # Threshold on val: cheapest tau within `tolerance` of the main output's accuracy.
    val = collect_outputs(model, make_loader(cfg, "val", train=False), "cpu")
    grid = threshold_grid(101)
    val_curve = sweep(val.logits, val.labels, costs.anytime, grid, names)
    val_main = float((val.logits[-1].argmax(-1) == val.labels).double().mean())
    ok = [t for t in range(len(grid)) if float(val_curve.accuracy[t]) >= val_main - args.tolerance]
    chosen = min(ok, key=lambda t: (float(val_curve.gflops[t]), -float(val_curve.accuracy[t])))
    tau = float(grid[chosen])

    # Report on test.
    test_loader = make_loader(cfg, "test", train=False)
    batches = [(x.clone(), y.clone()) for x, y in test_loader]
    test = collect_outputs(model, batches, "cpu")
    test_curve = sweep(test.logits, test.labels, costs.anytime, torch.tensor([tau], dtype=torch.float64), names)
    test_main = float((test.logits[-1].argmax(-1) == test.labels).double().mean())
    test_acc, test_gflops = float(test_curve.accuracy[0]), float(test_curve.gflops[0])
    main_gflops = costs.standalone[-1]
    count = sum(len(y) for _, y in batches)

    predicted = torch.cat([predict(model, x, tau).classes for x, _ in batches])
    predict_acc = float((predicted == test.labels).double().mean())

    def early_exit(chunk) -> None:
        for x, _ in chunk:
            predict(model, x, tau)

    def full_network(chunk) -> None:
        with torch.inference_mode():
            for x, _ in chunk:
                model.forward_main(x)

    def all_exits(chunk) -> None:
        with torch.inference_mode():
            for x, _ in chunk:
                model(x)

    variants = {"early exit": early_exit, "full network": full_network, "all exits": all_exits}
    for function in variants.values():  # warm-up
        function(batches[:10])
    chunk_size = min(args.chunk, len(batches))
    chunks = common.cycle_chunks(batches, chunk_size)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    sizes: list[int] = []
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    for round_index in range(args.repeats):
        chunk = next(chunks)
        sizes.append(sum(len(y) for _, y in chunk))
        gate()
        for name in common.rotate(list(variants), round_index):
            seconds[name].append(common.timed(lambda: variants[name](chunk))[0])

    speedup = [f / e for e, f in zip(seconds["early exit"], seconds["full network"])]
    vs_all = [a / e for e, a in zip(seconds["early exit"], seconds["all exits"])]
    fractions = {n: round(float(v), 4) for n, v in zip(names, test_curve.exit_fractions[0])}
    rows = [
        common.Row(f"early exit (tau = {tau:.2f})", _throughput(sizes, seconds["early exit"]), "img/s"),
        common.Row("full network (main only)", _throughput(sizes, seconds["full network"]), "img/s"),
        common.Row("all exits (multi-exit forward)", _throughput(sizes, seconds["all exits"]), "img/s"),
        common.Row(
            "early exit ÷ full network",
            common.Stat(speedup),
            "×",
            note=f"FLOPs predict {main_gflops / test_gflops:.2f}×",
        ),
        common.Row("early exit ÷ all exits", common.Stat(vs_all), "×"),
        common.Row(
            "GFLOPs/sample at tau (test)",
            common.Stat([test_gflops]),
            "GFLOPs",
            note=f"main {main_gflops:.4f}; exit fractions {fractions}",
        ),
        common.Row(
            "test accuracy: early exit",
            common.Stat([100 * test_acc]),
            "%",
            note=f"main {100 * test_main:.2f}%; predict() {100 * predict_acc:.2f}%",
        ),
    ]
    return common.Result(
        name="early_exit",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "samples": count,
            "batch_size": test_loader.batch_size,
            "rounds": args.repeats,
            "batches_per_round": chunk_size,
            "tolerance": args.tolerance,
            "train_subset": subset,
            "epochs": epochs,
            **source,
        },
        details={
            "threshold": tau,
            "val_main_accuracy": val_main,
            "val_early_exit_accuracy": float(val_curve.accuracy[chosen]),
            "val_gflops": float(val_curve.gflops[chosen]),
            "test_main_accuracy": test_main,
            "test_early_exit_accuracy": test_acc,
            "test_predict_accuracy": predict_acc,
            "test_gflops": test_gflops,
            "main_gflops": main_gflops,
            "costs_anytime": costs.anytime,
            "costs_standalone": costs.standalone,
            "exit_fractions": fractions,
            "seconds": seconds,
        },
    )
