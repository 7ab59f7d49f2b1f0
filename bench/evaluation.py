"""4. Evaluation: every exit + the ensemble vs one forward pass, over the same data.

Data: the CIFAR-100 test split (10,000 images; ``--samples`` to take fewer), normalized
by the project's evaluation loader (tensor backend, batch 128) and held in memory as a list
of batches, so both variants see identical tensors and no loading cost.

* ``forward``: ``model.eval()``; under ``torch.inference_mode()``, ``model(x)`` for every
  batch (the multi-exit network's one pass: all exits and the main output), outputs dropped;
* ``evaluate``: ``eed.engine.loops.collect_outputs(model, batches, "cpu")`` (the same pass,
  keeping every classifier's logits and the labels) + ``eed.metrics.summary.summarize`` (top-1,
  top-5 and ECE of each classifier, the ensemble and the running ensembles, and the
  exit/main agreement counts).

The network is resnet18 width 16 with exits, as the trainer builds it
(``eed.engine.setup.build_training``: params.yaml's init and stem), at its initial weights (the
cost does not depend on them). Each round times both variants, in alternating order, on the
same chunk of ``--chunk`` consecutive batches (default 20 = 2,560 images; the chunks walk through the
split and wrap around), and gives one ratio = evaluate seconds / forward seconds. Short,
many rounds keep a burst of load from other processes inside one or two rounds, which the
median then ignores. ``summarize`` runs per chunk, so its fixed per-call costs are spread
over 2,560 samples instead of the split's 10,000: the ratio slightly overstates the cost.
"""

from __future__ import annotations

import argparse

import torch

from bench import common

TARGET = 1.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=0, help="test images used (default 0: all 10,000)")
    parser.add_argument("--chunk", type=int, default=20, help="batches of 128 per round (default 20)")


def run(args: argparse.Namespace) -> common.Result:
    from eed.engine.loops import collect_outputs
    from eed.metrics.summary import summarize

    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    samples = args.samples or (1000 if args.quick else 10**9)
    setup = common.training_setup(common.config(prepared, "data.backend=tensor"), threads)
    cfg, model, loader, device = setup.config, setup.model, setup.test_loader, setup.runtime.device
    batches, count = [], 0
    for images, labels in loader:
        take = min(len(labels), samples - count)
        batches.append((images[:take].clone(), labels[:take].clone()))
        count += take
        if count >= samples:
            break
    names = setup.classifier_names

    def forward(chunk) -> None:
        model.eval()
        with torch.inference_mode():
            for images, _ in chunk:
                model(images)
        model.train()

    def evaluate(chunk) -> None:
        collected = collect_outputs(model, chunk, device)
        summarize(collected, names, "test")

    variants = {"forward": forward, "evaluate": evaluate}
    for function in variants.values():  # warm-up
        function(batches)
    chunk_size = min(args.chunk, len(batches))
    chunks = common.cycle_chunks(batches, chunk_size)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    sizes: list[int] = []
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    for round_index in range(args.repeats):
        chunk = next(chunks)
        gate()
        sizes.append(sum(len(y) for _, y in chunk))
        for name in common.rotate(list(variants), round_index):
            seconds[name].append(common.timed(lambda: variants[name](chunk))[0])

    collected = collect_outputs(model, batches, device)
    summarize_ms = [common.timed(lambda: summarize(collected, names, "test"))[0] * 1e3 for _ in range(5)]

    ratio = [e / f for e, f in zip(seconds["evaluate"], seconds["forward"])]
    rows = [
        common.Row("forward pass", common.Stat([n / s for n, s in zip(sizes, seconds["forward"])]), "img/s"),
        common.Row(
            "collect_outputs + summarize", common.Stat([n / s for n, s in zip(sizes, seconds["evaluate"])]), "img/s"
        ),
        common.target_row("evaluate ÷ forward time", ratio, "<=", TARGET),
        common.Row(
            f"summarize alone ({count} samples, {len(names)} classifiers)",
            common.Stat(summarize_ms),
            "ms",
            note="once over the whole split",
        ),
    ]
    return common.Result(
        name="evaluation",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "samples": count,
            "batch_size": loader.batch_size,
            "rounds": args.repeats,
            "batches_per_round": chunk_size,
            "arch": cfg.model.arch,
            "width": cfg.model.width,
            "split": "test",
        },
        details={"seconds": seconds},
    )
