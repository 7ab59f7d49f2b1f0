"""3. Objective overhead: one training step with method eed vs method branchynet.

Both steps are ``model(x)`` -> ``ExitEnsembleObjective(method)`` -> ``zero_grad`` ->
``backward`` -> ``SGD.step`` on the same multi-exit network and optimizer, as the trainer builds
them (``eed.engine.setup.build_training``: resnet18 width 16, params.yaml's init and stem;
one network for both methods, because two copies of one network ran up to 5 % apart in
speed here, where each copy's memory lies) and the same batch of 128 real CIFAR-100
training images (tensor-backend loader, in memory). params.yaml's loss settings: eed adds the
MSE output loss against the ensemble of all 4 classifiers and the partial-L2 feature loss
(alpha = beta = 1) to branchynet's 4 cross-entropies.

Steps alternate one by one (eed, branchynet, eed, ...; who goes first alternates per round);
a round's ratio is its eed seconds over its branchynet seconds. Also reported: the
objective alone (loss forward + its backward to the logits/features) in milliseconds, and
the step-time ratio derived from it, 1 + (eed objective - branchynet objective) / median
branchynet step: the two steps differ only in the loss, so this estimate is as precise as the
millisecond timings and barely moved by other processes' load, unlike the direct ratio.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench import common

TARGET = 1.03
METHODS = ("eed", "branchynet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps-per-round", type=int, default=6, help="steps of each method per round, alternating (default 6)"
    )


def run(args: argparse.Namespace) -> common.Result:
    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    steps = 2 if args.quick and args.steps_per_round == 6 else args.steps_per_round
    # The trainer's set-up (network as configured, SGD, tensor-backend loader) of method eed; the
    # branchynet objective over the same network (one network for both, see above).
    setup = common.training_setup(
        common.config(prepared, "data.backend=tensor", "train.batch_size=128", f"method={METHODS[0]}"), threads
    )
    cfg = setup.config
    x, y = next(iter(setup.train_loader))
    x, y = x.clone(), y.clone()

    model, optimizer = setup.train_model, setup.optimizer
    model.train()
    objectives = {method: common.objective_of(setup, method) for method in METHODS}

    def step(method: str) -> float:
        objective = objectives[method]
        start = common.now()
        loss = objective(model(x), y).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return common.now() - start

    for method in METHODS:  # warm-up
        step(method)
        step(method)

    round_ratio: list[float] = []
    all_steps: dict[str, list[float]] = {m: [] for m in METHODS}
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    for round_index in range(args.repeats):
        gate()
        totals = dict.fromkeys(METHODS, 0.0)
        order = common.rotate(list(METHODS), round_index)
        for _ in range(steps):
            for method in order:
                seconds = step(method)
                totals[method] += seconds
                all_steps[method].append(seconds)
        round_ratio.append(totals["eed"] / totals["branchynet"])

    # The objective alone: loss forward + backward into the (leaf) outputs, same batch.
    with torch.no_grad():
        output = model(x)
    loss_ms: dict[str, list[float]] = {m: [] for m in METHODS}
    for round_index in range(max(args.repeats, 5)):
        for method in common.rotate(list(METHODS), round_index):
            objective = objectives[method]
            leaves = type(output)(
                [z.detach().requires_grad_() for z in output.logits],
                [f.detach().requires_grad_() for f in output.features],
            )
            start = common.now()
            for _ in range(20):
                objective(leaves, y).total.backward()
            loss_ms[method].append((common.now() - start) / 20 * 1e3)

    images = 128
    step_ms = {m: statistics.median(v) * 1e3 for m, v in all_steps.items()}
    derived = [1 + (e - b) / step_ms["branchynet"] for e, b in zip(loss_ms["eed"], loss_ms["branchynet"])]
    rows = [common.Row(f"{m} step", common.Stat([images / s for s in all_steps[m]]), "img/s") for m in METHODS] + [
        common.target_row("eed ÷ branchynet step time", round_ratio, "<=", TARGET),
        common.target_row(
            "eed ÷ branchynet, derived from the objective alone",
            derived,
            "<=",
            TARGET,
            note="1 + Δobjective ms / branchynet step ms",
        ),
        common.Row("eed objective alone (fwd+bwd)", common.Stat(loss_ms["eed"]), "ms"),
        common.Row("branchynet objective alone (fwd+bwd)", common.Stat(loss_ms["branchynet"]), "ms"),
    ]
    return common.Result(
        name="objective",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "batch_size": images,
            "steps_per_round": steps,
            "repeats": args.repeats,
            "arch": cfg.model.arch,
            "width": cfg.model.width,
            "loss": cfg.loss.model_dump(),
        },
        details={"median_step_ms": step_ms},
    )
