"""7. Does early exit pay? The served early-exit model's realised wall-clock speed-up ÷ the FLOPs
speed-up, at every fitted threshold of every exit rule, at batch 1, 8 and 128, eager and compiled,
at width 16 (the trained default model) and at width 64 (the paper's width; random weights).

What is timed is the answering object a deployment calls (``eed.inference.served.ServedModel.answer``,
what the logged pyfunc model wraps: input checks, normalization, the cascade, the answer columns),
on raw uint8 test images (N × 32 × 32 × 3), loaded eager and compiled (``eed serve --compiled``:
segments and main output compiled with ``torch.compile`` at load). ``bench/run.py latency`` times the
same model behind ``mlflow models serve``.

Width 16: the early_exit benchmark's model (``--checkpoint PATH``, else the ``dvc repro`` model
trained once and cached). Its thresholds are fitted on val exactly as the evaluate stage fits them
(``eed.stages.evaluate.fit_early_exit`` with params.yaml's ``eval``): every rule's ``budget_<GFLOPs>``
thresholds, and the guaranteed ``max_drop`` one when it is not the main output alone.

Width 64 (``--wide-width``; 0 skips it): the same architecture with random weights (nothing trained
at that width here). Its thresholds are *set*, not fitted: for each width-16 threshold, the one (among
every score the wide network gives the test images) whose exit fractions on those images are nearest
(L1) to the width-16 ones; both fractions are reported. Its accuracy means nothing.

Variants, each timed on the same images in each round, order rotating: ``<rule> <name>`` (explicit
threshold and rule: ``answer(images, threshold=τ, exit_rule=rule)``), ``main only`` (τ above 1: no
exit head computed), each eager and compiled; and the plain network, ``full network``: normalization
+ ``model.forward_main`` + softmax max/argmax under ``torch.inference_mode()`` (no answer table), eager
and compiled (the compiled runner's main output).

Per round: realised speed-up = variant img/s ÷ full-network img/s *of the same mode* (eager ÷ eager,
compiled ÷ compiled: the gain of compiling cancels out); FLOPs speed-up = main-output GFLOPs ÷ the mean
GFLOPs of the answers for those images; efficiency = realised ÷ FLOPs (goal ≥ 0.8, held against and
reported). Rows ``compiled ÷ eager`` give the gain of compiling itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench import common
from bench.early_exit import add_model_arguments, trained_model

BATCHES = (1, 8, 128)
ABOVE_ONE = 1.5  # a threshold no score reaches: the main output alone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--images",
        type=int,
        nargs=3,
        default=(48, 128, 512),
        metavar=("AT_1", "AT_8", "AT_128"),
        help="images per round at batch 1, 8 and 128, width 16 (default 48 128 512)",
    )
    parser.add_argument("--wide-width", type=int, default=64, help="the random-weight network's width (0: skip)")
    parser.add_argument(
        "--wide-images",
        type=int,
        nargs=3,
        default=(16, 64, 256),
        metavar=("AT_1", "AT_8", "AT_128"),
        help="images per round at batch 1, 8 and 128, wide network (default 16 64 256)",
    )


def fitted_thresholds(trained, test) -> dict[tuple[str, str], float]:
    """{(rule, name): τ} of the trained model, fitted on val as the evaluate stage fits them."""
    from eed.data import make_loader
    from eed.engine.loops import collect_outputs
    from eed.metrics.summary import summarize
    from eed.stages.evaluate import fit_early_exit

    cfg, model = trained.cfg, trained.model
    names = list(model.classifier_names())
    report = summarize(test, names, "test", cfg.eval.ece_bins)
    fit_early_exit(
        model,
        test,
        names,
        cfg,
        "test",
        lambda split: collect_outputs(model, make_loader(cfg, split, train=False), "cpu"),
        report,
    )
    thresholds = {
        (rule, f"budget_{fit.budget:g}"): fit.threshold
        for rule, result in report.anytime.rules.items()
        for fit in result.budgets
        if fit.feasible
    }
    guaranteed = report.guaranteed
    if guaranteed is not None and guaranteed.fit.threshold <= 1.0:
        thresholds[(guaranteed.fit.rule, "max_drop")] = guaranteed.fit.threshold
    return thresholds


def exit_fractions(logits: torch.Tensor, rule: str, tau: float) -> list[float]:
    """Fraction of samples leaving at each classifier at ``tau`` under ``rule`` (logits: k × N × C)."""
    from eed.metrics.anytime import exit_indices

    exits = exit_indices(logits, torch.tensor([tau], dtype=torch.float64), rule)[0]
    return (torch.bincount(exits, minlength=logits.shape[0]).double() / exits.numel()).tolist()


def matched_threshold(logits: torch.Tensor, rule: str, target: list[float]) -> tuple[float, list[float]]:
    """The threshold among the scores of ``logits`` whose exit fractions are nearest (L1) to ``target``."""
    from eed.metrics.anytime import exit_indices, rule_scores

    candidates = torch.unique(rule_scores(logits, rule).double().flatten())
    if len(candidates) > 4000:
        candidates = candidates[torch.linspace(0, len(candidates) - 1, 4000).long()]
    exits = exit_indices(logits, candidates, rule)  # T × N
    counts = torch.zeros(len(candidates), logits.shape[0], dtype=torch.float64)
    counts.scatter_add_(1, exits, torch.ones_like(exits, dtype=torch.float64))
    fractions = counts / exits.shape[1]
    best = int((fractions - torch.tensor(target, dtype=torch.float64)).abs().sum(dim=1).argmin())
    return float(candidates[best]), fractions[best].tolist()


def wide_model(trained, width: int, test_images: torch.Tensor):
    """A random-weight network of ``trained`` 's architecture at ``width`` (model.init, seed 0), as a
    checkpoint; its logits (k × N × C) on ``test_images`` (normalized)."""
    from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState

    cfg, narrow = trained.cfg, Checkpoint.load(trained.source["checkpoint"]).network
    torch.manual_seed(0)
    network = NetworkSpec(narrow.arch, narrow.num_classes, width, True, narrow.stem_relu, narrow.class_names)
    model = network.build(init=cfg.model.init).eval()
    with torch.inference_mode():
        outputs = [model(test_images[i : i + 128]).logits for i in range(0, len(test_images), 128)]
    logits = torch.stack([torch.cat(parts) for parts in zip(*outputs)])
    return Checkpoint(network, model.state_dict(), cfg.model_dump(), TrainState()), logits


def test_accuracy(logits: torch.Tensor, labels: torch.Tensor, rule: str, tau: float) -> float:
    """Early-exit accuracy at ``tau`` under ``rule`` from collected logits (k × N × C)."""
    from eed.metrics.anytime import exit_indices

    exits = exit_indices(logits, torch.tensor([tau], dtype=torch.float64), rule)
    return float((logits.argmax(-1).gather(0, exits)[0] == labels).double().mean())


def time_width(
    label: str,
    served: dict,
    thresholds: dict[tuple[str, str], float],
    pixels: np.ndarray,
    images_per_batch: dict[int, int],
    args,
    gate,
    rows: list,
    details: dict,
) -> None:
    """Time every variant of one network at each batch; append the rows."""
    eager, compiled = served["eager"], served["compiled"]
    main_gflops = eager.costs.main_only
    variants = {f"{rule} {name}": (rule, tau) for (rule, name), tau in thresholds.items()}
    variants["main only"] = ("confidence", ABOVE_ONE)

    def full(model_of, main: Callable) -> Callable:
        def call(images: np.ndarray) -> None:
            with torch.inference_mode():
                main(model_of.normalizer(torch.from_numpy(images).permute(0, 3, 1, 2))).softmax(dim=-1).max(dim=-1)

        return call

    calls = {
        "eager full network": full(eager, eager.model.forward_main),
        "compiled full network": full(compiled, compiled.runner.main),
    }
    for mode, model_of in served.items():
        for name, (rule, tau) in variants.items():
            calls[f"{mode} {name}"] = lambda images, m=model_of, r=rule, t=tau: m.answer(
                images, threshold=t, exit_rule=r
            )
    for batch in BATCHES:
        per_round = max(batch, images_per_batch[batch] // batch * batch)
        starts = common.cycle_chunks(list(range(0, len(pixels) - per_round + 1, per_round)), 1)
        for call in calls.values():  # warm-up
            call(pixels[:batch])
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        spent: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(args.repeats):
            start = next(starts)[0]
            gate()
            chunk = [pixels[i : i + batch] for i in range(start, start + per_round, batch)]
            for name in common.rotate(list(calls), round_index):
                seconds[name].append(common.timed(lambda: [calls[name](images) for images in chunk])[0])
            for name, (rule, tau) in variants.items():  # untimed: what the answers cost
                spent[name].append(
                    float(
                        np.mean(
                            np.concatenate(
                                [eager.answer(images, threshold=tau, exit_rule=rule)["gflops"] for images in chunk]
                            )
                        )
                    )
                )
        details["seconds"][f"{label} batch {batch}"] = seconds
        prefix = f"{label}, batch {batch}"
        for mode in served:
            base = seconds[f"{mode} full network"]
            rows.append(
                common.Row(f"{prefix}: {mode} full network", common.Stat([per_round / s for s in base]), "img/s")
            )
        rows.append(
            common.Row(
                f"{prefix}: compiled ÷ eager, full network",
                common.Stat([e / c for e, c in zip(seconds["eager full network"], seconds["compiled full network"])]),
                "×",
            )
        )
        for name in variants:
            flops = [main_gflops / g for g in spent[name]]
            for mode in served:
                realised = [f / s for s, f in zip(seconds[f"{mode} {name}"], seconds[f"{mode} full network"])]
                rows.append(
                    common.target_row(
                        f"{prefix}: {name} ({mode}) realised ÷ FLOPs speed-up",
                        [r / f for r, f in zip(realised, flops)],
                        ">=",
                        0.8,
                        note=f"FLOPs predict {np.median(flops):.2f}×, realised {np.median(realised):.2f}×",
                    )
                )


def run(args: argparse.Namespace) -> common.Result:
    from eed.data import make_loader, read_split
    from eed.data.augment import Normalizer
    from eed.engine.checkpoint import Checkpoint
    from eed.engine.loops import collect_outputs
    from eed.inference.served import ServedModel

    started = common.now()
    trained = trained_model(args)
    threads, cfg = trained.threads, trained.cfg
    test = read_split(cfg, "test")
    pixels = test.images.permute(0, 2, 3, 1).numpy()  # N x H x W x 3 uint8, what users send
    collected = collect_outputs(trained.model, make_loader(cfg, "test", train=False), "cpu")
    thresholds = fitted_thresholds(trained, collected)
    torch.set_num_threads(threads)
    rows: list = []
    details: dict[str, Any] = {"seconds": {}, "widths": {}}
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)

    def load(checkpoint) -> dict:
        eager = ServedModel(checkpoint, normalization=test.normalization)
        seconds, compiled = common.timed(
            lambda: ServedModel(checkpoint, normalization=test.normalization, compiled=True)
        )
        torch.set_num_threads(threads)  # compiling may have touched it
        return {"eager": eager, "compiled": compiled, "compile_seconds": seconds}

    checkpoint = Checkpoint.load(trained.source["checkpoint"])
    width = checkpoint.network.width
    narrow = load(checkpoint)
    fractions = {
        f"{rule} {name}": exit_fractions(collected.logits, rule, tau) for (rule, name), tau in thresholds.items()
    }
    details["widths"][width] = {
        "thresholds": {f"{r} {n}": t for (r, n), t in thresholds.items()},
        "exit_fractions": fractions,
        "test_accuracy": {
            f"{r} {n}": test_accuracy(collected.logits, collected.labels, r, t) for (r, n), t in thresholds.items()
        },
        "main_accuracy": float((collected.logits[-1].argmax(-1) == collected.labels).double().mean()),
        "compile_seconds": narrow.pop("compile_seconds"),
    }
    time_width(f"width {width}", narrow, thresholds, pixels, dict(zip(BATCHES, args.images)), args, gate, rows, details)
    if args.wide_width:
        normalize = Normalizer(test.normalization)
        images = normalize(torch.from_numpy(pixels[:2048]).permute(0, 3, 1, 2))
        checkpoint, wide_logits = wide_model(trained, args.wide_width, images)
        matched = {key: matched_threshold(wide_logits, key[0], fractions[f"{key[0]} {key[1]}"]) for key in thresholds}
        wide = load(checkpoint)
        details["widths"][args.wide_width] = {
            "thresholds": {f"{r} {n}": tau for (r, n), (tau, _) in matched.items()},
            "exit_fractions": {f"{r} {n}": got for (r, n), (_, got) in matched.items()},
            "compile_seconds": wide.pop("compile_seconds"),
        }
        time_width(
            f"width {args.wide_width} (random weights)",
            wide,
            {key: tau for key, (tau, _) in matched.items()},
            pixels,
            dict(zip(BATCHES, args.wide_images)),
            args,
            gate,
            rows,
            details,
        )
    details["summary"] = summary(rows)
    return common.Result(
        name="serving",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "rounds": args.repeats,
            "images_per_round": dict(zip(BATCHES, args.images)),
            "wide_images_per_round": dict(zip(BATCHES, args.wide_images)),
            "wide_width": args.wide_width,
            "train_subset": trained.subset,
            "epochs": trained.epochs,
            "eval": cfg.eval.model_dump(),
            **trained.source,
        },
        details=details,
    )


def summary(rows: list) -> str:
    """The realised ÷ FLOPs medians as one Markdown table: a row per network and variant, a column per
    batch size and mode (what BENCHMARKS.md shows)."""
    import re

    cells: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        found = re.match(r"(.+), batch (\d+): (.+) \((eager|compiled)\) realised ÷ FLOPs", row.metric)
        if found:
            network, batch, variant, mode = found.groups()
            cells.setdefault((network, variant), {})[f"{batch} {mode}"] = row.stat.median
    columns = [f"{batch} {mode}" for batch in BATCHES for mode in ("eager", "compiled")]
    lines = [
        "| network | rule, threshold | " + " | ".join(f"batch {c}" for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for (network, variant), values in cells.items():
        lines.append(f"| {network} | {variant} | " + " | ".join(f"{values[c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)
