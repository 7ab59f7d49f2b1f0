"""7. The served early-exit model: images/s of the logged MLflow pyfunc model, loaded in
process, at its fitted thresholds vs the full network, at batch 1 and batch 128; the realised
wall-clock speed-up ÷ the FLOPs speed-up at the same threshold (goal ≥ 0.8).

The model is the early_exit benchmark's (``--checkpoint PATH``, else the ``dvc repro`` model
trained once and cached in bench/results/early_exit/). Its serving settings are fitted on val
exactly as the evaluate stage fits them (``eed.stages.evaluate.fit_early_exit`` with
params.yaml's ``eval``: the ``budget_<GFLOPs>`` thresholds and the guaranteed ``max_drop`` one),
and it is logged by ``eed.inference.export.log_served_model`` into a throw-away sqlite store, then
loaded with ``mlflow.pyfunc.load_model``: the object a deployment calls.

Variants, timed on the same raw uint8 test images (N × 32 × 32 × 3) in each round, order rotating:

* ``served <name>``: ``pyfunc.predict(images, params={"budget": name})`` for each fitted threshold
  (the answer's whole path: input checks, normalization, the cascade, the answer table);
* ``served, no exit taken``: threshold above 1, every image runs every exit and the main output;
* ``full network``: normalization + ``model.forward_main`` + softmax max/argmax under
  ``torch.inference_mode()``: what answering without exits costs (no pyfunc, no table);
* ``predict() <name>``: normalization + ``eed.inference.early_exit.predict`` at the same threshold,
  without the pyfunc wrapper: how much of the gap is the cascade and how much the wrapper;
* ``compiled served <name>``: the same logged model loaded with ``model_config={"compiled": True}``
  (``eed serve --compiled``: segments and main output compiled with ``torch.compile`` at load).

Per round and threshold: realised speed-up = served img/s ÷ full-network img/s; FLOPs speed-up =
main-output GFLOPs ÷ the mean GFLOPs the answers report for those images; efficiency = realised
÷ FLOPs. Accuracy at each threshold: the served answers on the whole test split (untimed).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import common
from bench.early_exit import trained_model

BATCHES = (1, 128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="an eed checkpoint to use instead of training one")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="training images (default: params.yaml's, 20000 at the cpu preset)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: params.yaml's, 4)")
    parser.add_argument("--images", type=int, nargs=2, default=(64, 512), metavar=("AT_1", "AT_128"),
                        help="images per round at batch 1 and at batch 128 (default 64 512)")


def _served(cfg, checkpoint_path: Path, model, folder: Path):
    """The model logged as the evaluate stage logs it, loaded back as a pyfunc model; the report."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from eed.data import make_loader
    from eed.engine.checkpoint import Checkpoint
    from eed.engine.loops import collect_outputs
    from eed.inference.export import log_served_model
    from eed.metrics.summary import summarize
    from eed.stages.evaluate import fit_early_exit
    from eed.tracking import using_tracking_uri

    names = list(model.classifier_names())

    def collect(split: str):
        return collect_outputs(model, make_loader(cfg, split, train=False), "cpu")

    test = collect("test")
    report = summarize(test, names, "test", cfg.eval.ece_bins)
    fit_early_exit(model, test, names, cfg, "test", collect, report)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("bench", (folder / "artifacts").as_uri())).info.run_id
    model_id = log_served_model(uri, run_id, Checkpoint.load(checkpoint_path), report, cfg, "test")
    with using_tracking_uri(uri):  # eager, and compiled (eed serve --compiled)
        return (mlflow.pyfunc.load_model(f"models:/{model_id}"),
                mlflow.pyfunc.load_model(f"models:/{model_id}", model_config={"compiled": True}), report)


def run(args: argparse.Namespace) -> common.Result:
    from eed.data import read_split
    from eed.data.augment import Normalizer
    from eed.inference.early_exit import predict
    from eed.metrics.anytime import ClassifierCosts
    from eed.metrics.flops import profile_model

    started = common.now()
    trained = trained_model(args)
    threads, cfg, model, source = trained.threads, trained.cfg, trained.model, trained.source
    main_gflops = ClassifierCosts.from_profile(profile_model(model, 32)).standalone[-1]

    with tempfile.TemporaryDirectory(prefix="eed-bench-serving-") as folder:
        served, compiled, report = _served(cfg, Path(source["checkpoint"]), model, Path(folder))
        torch.set_num_threads(threads)  # loading may have touched it
        test = read_split(cfg, "test")
        pixels = test.images.permute(0, 2, 3, 1).numpy()  # N x H x W x 3 uint8, what users send
        labels = test.labels.numpy()
        normalize = Normalizer(test.normalization)
        thresholds = dict(report_thresholds(served))

        def full(images: np.ndarray) -> None:
            with torch.inference_mode():
                logits = model.forward_main(normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
                logits.softmax(dim=-1).max(dim=-1)

        variants = {f"served {name}": {"budget": name} for name in thresholds}
        variants["served, no exit taken"] = {"threshold": 1.5}

        # Untimed: accuracy and GFLOPs of every threshold on the whole test split.
        accuracy, gflops = {}, {}
        for name, params in variants.items():
            answers = [served.predict(pixels[i:i + 128], params=params) for i in range(0, len(pixels), 128)]
            classes = np.concatenate([a["class"].to_numpy() for a in answers])
            accuracy[name] = float((classes == labels).mean())
            gflops[name] = float(np.concatenate([a["gflops"].to_numpy() for a in answers]).mean())
        full_correct = []
        with torch.inference_mode():
            for i in range(0, len(pixels), 128):
                x = normalize(torch.from_numpy(pixels[i:i + 128]).permute(0, 3, 1, 2))
                full_correct.append(model.forward_main(x).argmax(-1).numpy() == labels[i:i + 128])
        full_accuracy = float(np.concatenate(full_correct).mean())

        rows, details = [], {"thresholds": thresholds, "accuracy": accuracy, "gflops": gflops,
                             "full_accuracy": full_accuracy, "main_gflops": main_gflops, "seconds": {}}
        gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
        for batch, per_round in zip(BATCHES, args.images):
            per_round = max(batch, per_round // batch * batch)
            calls = {name: (lambda images, params=params: served.predict(images, params=params))
                     for name, params in variants.items()}
            calls["full network"] = full
            for name, params in variants.items():  # the same answers, the segments compiled
                calls[f"compiled {name}"] = lambda images, params=params: compiled.predict(images, params=params)
            for name, tau in thresholds.items():  # the cascade alone: where the served model's time goes
                calls[f"predict() {name}"] = lambda images, tau=tau: predict(
                    model, normalize(torch.from_numpy(images).permute(0, 3, 1, 2)), tau)
            starts = common.cycle_chunks(list(range(0, len(pixels) - per_round + 1, per_round)), 1)
            for name, call in calls.items():  # warm-up
                call(pixels[:batch])
            seconds = {name: [] for name in calls}
            spent = {name: [] for name in variants}  # mean GFLOPs of the answers, per round
            for round_index in range(args.repeats):
                start = next(starts)[0]
                gate()
                chunk = [pixels[i:i + batch] for i in range(start, start + per_round, batch)]
                for name in common.rotate(list(calls), round_index):
                    seconds[name].append(common.timed(lambda: [calls[name](images) for images in chunk])[0])
                for name, params in variants.items():
                    spent[name].append(float(np.mean([served.predict(images, params=params)["gflops"].mean()
                                                      for images in chunk])))
            details["seconds"][batch] = seconds
            rows.append(common.Row(f"batch {batch}: full network (main only)",
                                   common.Stat([per_round / s for s in seconds["full network"]]), "img/s",
                                   note=f"test top-1 {100 * full_accuracy:.2f}%"))
            for name in variants:
                realised = [f / s for s, f in zip(seconds[name], seconds["full network"])]
                flops = [main_gflops / g for g in spent[name]]
                tau = thresholds.get(name.removeprefix("served "), 1.5)
                rows.append(common.Row(f"batch {batch}: {name} (τ = {tau:.3g})",
                                       common.Stat([per_round / s for s in seconds[name]]), "img/s",
                                       note=f"test top-1 {100 * accuracy[name]:.2f}%, {gflops[name]:.4f} GFLOPs/img"))
                rows.append(common.Row(f"batch {batch}: {name} ÷ full network", common.Stat(realised), "×",
                                       note=f"FLOPs predict {np.median(flops):.2f}×"))
                if name != "served, no exit taken":
                    rows.append(common.target_row(f"batch {batch}: {name} realised ÷ FLOPs speed-up",
                                                  [r / f for r, f in zip(realised, flops)], ">=", 0.8))
                    bare = f"predict() {name.removeprefix('served ')}"
                    alone = [f / s for s, f in zip(seconds[bare], seconds["full network"])]
                    rows.append(common.Row(f"batch {batch}: {bare} (no pyfunc) realised ÷ FLOPs speed-up",
                                           common.Stat([r / f for r, f in zip(alone, flops)]), "×",
                                           note=f"{np.median([per_round / s for s in seconds[bare]]):,.0f} img/s"))
                fast = f"compiled {name}"
                quick = [f / s for s, f in zip(seconds[fast], seconds["full network"])]
                rows.append(common.Row(f"batch {batch}: {fast} ÷ served eager", common.Stat(
                    [e / c for e, c in zip(seconds[name], seconds[fast])]), "×",
                    note=f"{np.median([per_round / s for s in seconds[fast]]):,.0f} img/s"))
                if name != "served, no exit taken":
                    rows.append(common.target_row(f"batch {batch}: {fast} realised ÷ FLOPs speed-up",
                                                  [r / f for r, f in zip(quick, flops)], ">=", 0.8))
    return common.Result(
        name="serving", command=args.command_line, rows=rows, seconds=common.now() - started, gate=gate,
        settings={"threads": threads, "rounds": args.repeats, "images_per_round": dict(zip(BATCHES, args.images)),
                  "train_subset": trained.subset, "epochs": trained.epochs, "eval": cfg.eval.model_dump(), **source},
        details=details)


def report_thresholds(served) -> list[tuple[str, float]]:
    """The fitted thresholds the served model carries (name, value), budgets first."""
    answering = served.unwrap_python_model().served  # the eed.inference.served.ServedModel inside
    return sorted(answering.thresholds.items(), key=lambda item: (item[0] == "max_drop", item[0]))
