"""Training orchestration: ``train(config, out_dir)`` builds the model, loaders and objective
from the typed config, runs SGD epochs (:func:`eed.engine.loops.train_one_epoch`), validates
every classifier and their ensemble after each epoch, logs all of it to one MLflow run, and
writes ``last.pt`` (every ``checkpoint_every`` epochs) and ``best.pt`` (best main-output
accuracy on the validation split; without one, the last epoch).

Test accuracy is reported, never used to choose: every epoch as ``test/epoch_acc_*``; at the
end as ``test/acc_*``, the weights of ``best.pt``, and as ``test/max_acc_*``, each output's
maximum over the epochs, which is what the paper and the official release report (selected
on test, hence optimistic; :data:`METRIC_MEANINGS`). The same code runs on CPU
and CUDA; on CUDA it adds bf16 autocast and channels_last. Under ``torchrun`` it trains with
DistributedDataParallel.

A run goes through phases recorded in ``last.pt`` (epochs, final, done): a re-run continues
the phase it was in, into the same MLflow run; an epoch reaches the store only once its
checkpoint is on disk, and only the steps the store lacks are logged (README, "Reliability").
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn

from eed import data as eed_data
from eed import tracking
from eed.config import Config, flatten
from eed.engine.checkpoint import (CheckpointError, checkpoint_phase, load_checkpoint, model_from_checkpoint,
                                   resume_checkpoint, save_checkpoint)
from eed.engine.loops import EpochStats, train_one_epoch, validate
from eed.engine.optim import build_optimizer, build_scheduler
from eed.engine.runtime import Runtime, restore_rng_state, rng_state, seed_everything, setup_runtime
from eed.engine.signals import GracefulStop
from eed.errors import EXIT_CODE_SIGNAL, TrainingInterrupted
from eed.models.export import servable
from eed.models.multi_exit import MultiExitNet
from eed.models.registry import create_model, get_spec
from eed.objectives import ExitEnsembleObjective
from eed.paths import ensure_free_space, ensure_writable
from eed.progress import progress_bar
from eed.reporting.figures import plot_training_curves
from eed.reporting.files import figure_caption, write_training_summary

console = Console(stderr=True)


@dataclass
class TrainResult:
    run_id: str | None
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    epochs_completed: int
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    model: MultiExitNet | None = None  # the trained network (final weights), for API users


def train(config: Config, out_dir: str | Path, *, resume: str | Path | bool = "auto") -> TrainResult:
    """Train ``config`` and write checkpoints/figures to ``out_dir``; see the module docstring."""
    out_dir = Path(out_dir)
    runtime = setup_runtime(config.train)
    checkpoint_dir = out_dir / "checkpoints"
    last_path, best_path = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    resumed = resume_checkpoint(resume, last_path, config)

    tracking_uri = None
    if config.tracking.enabled and runtime.is_main:
        tracking_uri = tracking.resolve_tracking_uri(config)
        tracking.check_tracking_uri(tracking_uri)  # before any expensive work
    if runtime.is_main:  # an unusable folder fails now, not after an epoch
        for folder in (checkpoint_dir, out_dir / "figures"):
            ensure_writable(folder)

    seed_everything(config.seed + runtime.rank, config.train.deterministic)
    manifest = eed_data.load_manifest(config)
    has_val = config.data.val_size > 0
    train_loader = eed_data.make_loader(config, "train", train=True, device=runtime.device,
                                        distributed=runtime.distributed)
    test_loader = eed_data.make_loader(config, "test", train=False, device=runtime.device)
    val_loader = eed_data.make_loader(config, "val", train=False, device=runtime.device) if has_val else None
    exits = config.method != "baseline"
    model = create_model(config.model.arch, manifest.num_classes, config.model.width, exits=exits,
                         stem_relu=config.model.stem_relu, init=config.model.init).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    classifier_names = model.classifier_names()
    objective = ExitEnsembleObjective(config.method, config.loss, model.num_classifiers)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, len(train_loader))

    if runtime.is_main:  # last.pt and best.pt (+ best.pt.pending while it is replaced)
        ensure_free_space(checkpoint_dir, 3 * _checkpoint_bytes(model, optimizer), "three checkpoints")

    start_epoch, skip_steps, best_metric, run_id = 0, 0, -1.0, None
    test_max: dict[str, list[float]] = {}  # output -> [max test accuracy so far, its epoch]
    if resumed is not None:
        if resumed["arch"] != config.model.arch or resumed["num_classes"] != manifest.num_classes:
            raise CheckpointError(f"cannot resume a {resumed['arch']} checkpoint with {resumed['num_classes']} "
                                  f"classes into {config.model.arch} with {manifest.num_classes}")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        restore_rng_state(resumed["rng"])
        start_epoch, skip_steps = resumed["epoch"], resumed.get("step_in_epoch", 0)
        best_metric, run_id = resumed.get("best_metric", -1.0), resumed.get("run_id")
        test_max = {name: list(point) for name, point in resumed.get("test_max", {}).items()}
        console.print(f"[cyan]Resuming from epoch {start_epoch}"
                      + (f", step {skip_steps}" if skip_steps else "") + f" ({last_path})")

    train_model: nn.Module = model
    if runtime.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if config.train.compile:
        train_model = torch.compile(train_model)

    adopted = False
    if tracking_uri and run_id is None:  # a run killed before its first checkpoint: continue it
        run_id = _orphan_run(tracking_uri, last_path)
        adopted = run_id is not None
    logger = (tracking.MlflowLogger.for_training(config, tracking_uri, run_id,
                                                 description=_run_description(config, objective))
              if tracking_uri else None)
    if logger and run_id is None:
        logger.set_tags({CHECKPOINT_TAG: str(last_path.resolve())})
    elif logger and adopted:
        logger.log_params(flatten(config))  # in case the kill came before they were logged (same values)
    datasets = _dataset_records(config, manifest)
    if logger:
        logger.log_datasets(list(datasets.values()))
    # The checkpoint's history is the record of every finished epoch (it matches its weights);
    # the store gets an epoch only once its checkpoint is on disk, and only the steps it lacks
    # (a kill between the two leaves them out, the re-run adds them: every step exactly once).
    in_store = logger.history() if logger else {}
    stored = {name: {step for step, _ in points} for name, points in in_store.items()}
    history: dict[str, list[tuple[int, float]]] = (
        {name: [tuple(point) for point in points] for name, points in resumed["history"].items()}
        if resumed is not None and "history" in resumed else in_store)  # (checkpoints before eed kept it)
    phase = _phase_of(resumed, config) if resumed is not None else "epochs"
    best_epoch = (resumed or {}).get("best_epoch", 0)
    partial = (resumed or {}).get("partial_epoch")  # the trained part of an interrupted epoch
    pending_best = checkpoint_dir / "best.pt.pending"
    if runtime.is_main:
        _settle_pending_best(pending_best, best_path, best_epoch if resumed is not None else None)

    def checkpoint_dict(epoch: int, step_in_epoch: int, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
        return {
            "arch": config.model.arch, "num_classes": manifest.num_classes, "width": config.model.width,
            "exits": exits, "stem_relu": config.model.stem_relu, "class_names": list(manifest.class_names),
            "config": config.model_dump(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
            "metrics": metrics, "best_metric": best_metric, "best_epoch": best_epoch, "test_max": test_max,
            "history": history, "phase": phase, "run_id": logger.run_id if logger else None, **extra,
        }

    def metrics_of(epoch: int) -> dict[str, float]:
        return {name: value for name, points in history.items() for step, value in points if step == epoch}

    def sync_store() -> None:
        """Log every history point the store lacks, in step order (one pass over the history)."""
        if logger is None:
            return
        missing: dict[int, dict[str, float]] = {}
        for name, points in history.items():
            logged = stored.get(name, set())
            for step, value in points:
                if step not in logged:
                    missing.setdefault(step, {})[name] = value
        for step in sorted(missing):
            logger.log_metrics(missing[step], step)
            for name in missing[step]:
                stored.setdefault(name, set()).add(step)

    def commit(epoch: int) -> None:
        """last.pt, then best.pt (promoted from pending: it is only "best" once last.pt knows it),
        then the store: an interruption anywhere in between leaves a state the re-run completes."""
        if runtime.is_main:
            save_checkpoint(checkpoint_dict(epoch, 0, metrics_of(epoch)), last_path)
            if pending_best.is_file():
                pending_best.replace(best_path)
        sync_store()

    epoch = start_epoch
    try:
        with GracefulStop(console) as stop, progress_bar(console, runtime.is_main) as progress, \
                (logger.system_metrics() if logger else contextlib.nullcontext()):

            def stop_if_requested(where: str, epoch_done: int, steps_done: int = 0, **extra: Any) -> None:
                """A signal arrived: checkpoint where we are, end the run KILLED, exit 143/130."""
                if not stop.requested():
                    return
                if runtime.is_main:
                    save_checkpoint(checkpoint_dict(epoch_done, steps_done, metrics_of(epoch_done), **extra),
                                    last_path)
                sync_store()
                if logger:
                    logger.finish("KILLED")
                name = signal.Signals(stop.signal).name
                raise TrainingInterrupted(f"{name} {where}: checkpoint written to {last_path}; re-run to resume",
                                          EXIT_CODE_SIGNAL[stop.signal])

            if resumed is None and runtime.is_main:  # the run id on disk before anything can be lost
                save_checkpoint(checkpoint_dict(0, 0, {}), last_path)
            sync_store()  # epochs the checkpoint holds that a kill kept from the store
            if phase == "epochs":
                train_loader.warmup(console=console)  # FFCV's one-off JIT compile, kept out of epoch timings
                stop_if_requested("during the loader warm-up", start_epoch, skip_steps, partial_epoch=partial)
            for epoch in range(start_epoch + 1, config.train.epochs + 1) if phase == "epochs" else ():
                train_loader.set_epoch(epoch)
                resuming_mid_epoch = epoch == start_epoch + 1 and skip_steps > 0
                stats = train_one_epoch(train_model, objective, train_loader, optimizer, scheduler, runtime,
                                        epoch=epoch, classifier_names=classifier_names,
                                        skip_steps=skip_steps if resuming_mid_epoch else 0,
                                        should_stop=stop.requested, progress=progress, last_checkpoint=last_path)
                if resuming_mid_epoch and partial is not None:
                    stats = _whole_epoch(partial, stats)  # the epoch's metrics over all of its steps
                if not stats.completed:  # a signal arrived mid-epoch
                    stop_if_requested(f"at epoch {epoch}, step {stats.steps_done}", epoch - 1, stats.steps_done,
                                      partial_epoch=_partial_record(stats))
                if runtime.distributed:  # BN statistics drift per rank after the last step: take rank 0's
                    for buffer in model.buffers():
                        dist.broadcast(buffer, src=0)
                test = validate(train_model, test_loader, runtime, classifier_names)
                val = validate(train_model, val_loader, runtime, classifier_names) if has_val else None
                for name, value in test.items():
                    if name not in test_max or value > test_max[name][0]:
                        test_max[name] = [value, epoch]
                metrics = _epoch_metrics(stats, val, test, optimizer)
                for name, value in metrics.items():
                    history.setdefault(name, []).append((epoch, value))
                if runtime.is_main:
                    if epoch == start_epoch + 1:
                        console.print(_epoch_header(classifier_names, has_val), highlight=False)
                    console.print(_epoch_line(epoch, config.train.epochs, metrics, has_val), highlight=False)
                    # Select on the validation split only; without one, the last epoch is "best".
                    if val is None or val["main"] > best_metric:
                        best_metric = val["main"] if val is not None else test["main"]
                        best_epoch = epoch
                        save_checkpoint(checkpoint_dict(epoch, 0, metrics), pending_best)
                if epoch == config.train.epochs:
                    phase = "final"
                if epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs:
                    commit(epoch)
                elif stop.requested():  # checkpoint_every > 1: keep this epoch rather than lose it
                    commit(epoch)
                stop_if_requested(f"after epoch {epoch}", epoch)
            epoch = config.train.epochs
            result = TrainResult(logger.run_id if logger else None, out_dir, last_path, best_path, epoch, history,
                                 model=model)
            if runtime.is_main:
                selected = load_checkpoint(best_path)
                selected_model = model_from_checkpoint(selected).to(runtime.device)
                result.test_metrics = _final_test(test_loader, runtime, selected_model, classifier_names, test_max)
                stop_if_requested("during the final test", epoch)
                write_training_summary(result.history, result.test_metrics, result.epochs_completed, out_dir)
                figures = plot_training_curves(result.history, out_dir / "figures", caption=figure_caption(config))
                if logger:
                    _log_results(logger, result, figures, config, selected_model, selected["epoch"], stored,
                                 lambda: stop_if_requested("while logging the results", epoch), manifest,
                                 datasets["test"])
                if logger:  # FINISHED before last.pt says "done": a kill in between re-runs the final phase
                    logger.finish("FINISHED")
                phase = "done"
                save_checkpoint(checkpoint_dict(epoch, 0, metrics_of(epoch)), last_path)
        return result
    except TrainingInterrupted:
        raise  # the run already ended KILLED
    except BaseException:
        if logger:
            logger.finish("FAILED")
        raise
    finally:
        if runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


# What the final test metrics are, logged with the run as tags (``eed.meaning.<metric>``) and
# shown by `eed compare`: the paper's number and eed's recommended one are not the same thing.
METRIC_MEANINGS = {
    "test/acc_*": "the weights of best.pt: selected on validation (best main accuracy), or the last epoch "
                  "when there is no validation split",
    "test/max_acc_*": "max over epochs, as in the paper; selected on test, optimistic",
    "test/epoch_acc_*": "test accuracy after each epoch (reported, never used to select)",
}


def _final_test(test_loader, runtime: Runtime, selected: MultiExitNet, names: list[str],
                test_max: dict[str, list[float]]) -> dict[str, float]:
    """Test accuracy of the selected weights, and each output's maximum over the epochs;
    reported, never used to choose."""
    accuracy = validate(selected, test_loader, runtime, names)
    metrics = {f"test/acc_{name}": value for name, value in accuracy.items()}
    metrics.update({f"test/max_acc_{name}": best for name, (best, _) in test_max.items()})
    metrics.update({f"test/max_acc_epoch_{name}": epoch for name, (_, epoch) in test_max.items()})
    return metrics


def _log_results(logger: tracking.MlflowLogger, result: TrainResult, figures: list[Path], config: Config,
                 selected: MultiExitNet, selected_epoch: int, stored: dict[str, set[int]],
                 stop_if_requested: Callable[[], None], manifest: Any, test_set: tracking.DatasetRecord) -> None:
    """The end of a training run: figures, checkpoints, as the model the weights the test
    metrics are of (best.pt, not the last epoch's), then the test metrics, linked to that model
    and to the test set (those the store lacks: a re-run after an interruption here logs none
    twice). A signal stops between them."""
    selected_on = f"validation, epoch {selected_epoch}" if config.data.val_size > 0 else "last epoch"
    logger.set_tags({f"eed.meaning.{name.removesuffix('_*')}": meaning.replace("best.pt", f"best.pt ({selected_on})")
                     for name, meaning in METRIC_MEANINGS.items()})
    for figure in figures:
        logger.log_artifact(figure, "figures")
    for checkpoint in (result.last_checkpoint, result.best_checkpoint):
        logger.log_artifact(checkpoint, "checkpoints")
    stop_if_requested()
    step = result.epochs_completed
    missing = {k: v for k, v in result.test_metrics.items() if step not in stored.get(k, set())}
    model_id = None
    if missing:  # the model and its metrics go together: a re-run that lacks none logs no second model
        model_id = logger.log_model(*servable(selected, _example_images(config, manifest)),
                                    metadata=_model_metadata(config, manifest, selected, selected_epoch))
        stop_if_requested()
    logger.log_metrics(missing, step, model_id=model_id, dataset=test_set)


def _example_images(config: Config, manifest: Any, count: int = 2) -> Any:
    """The first ``count`` test images, normalized as the loaders do: the model's input example."""
    samples = eed_data.read_split(config, "test", indices=list(range(count)))
    return eed_data.Normalizer(samples.normalization)(samples.images).numpy()


def _model_metadata(config: Config, manifest: Any, model: MultiExitNet, epoch: int) -> dict[str, Any]:
    """What a user of the logged model needs besides the weights: what its input is, what its
    output axes are, and which weights these are."""
    return {
        "checkpoint": "best.pt", "epoch": epoch,
        "selected_on": "val" if config.data.val_size > 0 else "last epoch",
        "input": "float32 N x 3 x H x W, (pixel / 255 - mean) / std per channel",
        "normalization": dict(manifest.normalization),
        "output": "float32 N x classifiers x classes: logits, classifiers in network order",
        "classifiers": model.classifier_names(),
        "class_names": list(manifest.class_names),
        "arch": config.model.arch, "width": config.model.width, "method": config.method,
        "dataset": config.data.dataset,
    }


def _run_description(config: Config, objective: ExitEnsembleObjective) -> str:
    """The run's one-paragraph description (MLflow's Description field)."""
    return (f"{objective.describe()}. {config.model.arch} width {config.model.width} on {config.data.dataset}, "
            f"{config.train.epochs} epochs ({config.train.schedule} schedule), batch {config.train.batch_size}, "
            f"seed {config.seed}, {config.scale} scale, {config.reference} reference.")


def _dataset_records(config: Config, manifest: Any) -> dict[str, tracking.DatasetRecord]:
    """The prepared splits a run reads, for MLflow's Datasets: digests from the manifest's
    sha256 (the training set's also from the subset it draws, which changes what is read)."""
    import hashlib

    # The images all processes together read (a loader's count is its process's share under DDP).
    used = {"train": min(config.data.train_subset or manifest.splits["train"].num_samples,
                         manifest.splits["train"].num_samples)}
    contexts = {"train": "training", "val": "validation", "test": "test"}
    records = {}
    for split, context in contexts.items():
        record = manifest.splits.get(split)
        if record is None or (split == "val" and config.data.val_size == 0):
            continue
        digest = record.sha256.removeprefix("sha256:") or f"{record.bytes:x}"
        count = used.get(split, record.num_samples)
        if count != record.num_samples:  # a stratified subset, seeded by data.split_seed
            digest = hashlib.sha256(f"{digest}:{count}:{config.data.split_seed}".encode()).hexdigest()
        path = (manifest.directory / record.file).resolve() if manifest.directory else Path(record.file)
        records[split] = tracking.DatasetRecord(
            name=f"{config.data.dataset}-{split}", digest=digest[:32], source=path.as_uri(), context=context,
            profile={"num_samples": count, "num_samples_in_file": record.num_samples,
                     "num_classes": manifest.num_classes, "sha256": record.sha256, "bytes": record.bytes})
    return records


def _checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About the size of one checkpoint: the weights and buffers, SGD's momentum of every
    parameter, and 1 MiB for the rest."""
    tensors = [*model.state_dict().values(), *model.parameters()]
    return sum(t.numel() * t.element_size() for t in tensors) + 2**20


# Tags a training run with the last.pt it writes: a run killed before that file existed is
# found by it and continued, rather than left RUNNING beside a new one.
CHECKPOINT_TAG = "eed.checkpoint"


def _orphan_run(tracking_uri: str, last_path: Path) -> str | None:
    """The RUNNING training run that was to write ``last_path`` (none exists yet), if any."""
    runs = tracking.find_runs(tracking_uri, tags={CHECKPOINT_TAG: str(last_path.resolve())})
    running = [run.run_id for run in runs if run.status == "RUNNING"]
    return running[0] if running else None


def _phase_of(checkpoint: dict[str, Any], config: Config) -> str:
    """Where the run of ``checkpoint`` was: "epochs", "final" (every epoch done; the final test,
    artifacts and model not yet) or "done" (checkpoints written before phases: from the epoch)."""
    return checkpoint_phase(checkpoint, config.train.epochs)


def _settle_pending_best(pending: Path, best_path: Path, resumed_best_epoch: int | None) -> None:
    """A best.pt.pending left by an interruption: promote it when the resumed checkpoint counts
    its epoch as the best, else drop it (its epoch was lost and is trained again)."""
    if not pending.is_file():
        return
    if resumed_best_epoch is not None and load_checkpoint(pending)["epoch"] == resumed_best_epoch:
        pending.replace(best_path)
    else:
        pending.unlink()


def _partial_record(stats: EpochStats) -> dict[str, Any]:
    """What a checkpoint keeps of an interrupted epoch, so that the resumed epoch reports all of it."""
    return {"loss_terms": stats.loss_terms, "accuracy": stats.accuracy, "images": stats.images,
            "seconds": stats.seconds, "steps": stats.steps_run}


def _whole_epoch(partial: dict[str, Any], rest: EpochStats) -> EpochStats:
    """An epoch trained in two (or more) parts as one: losses weighted by steps, accuracies by
    images, the time of both parts."""
    steps = partial["steps"] + rest.steps_run
    images = partial["images"] + rest.images

    def mean(before: dict[str, float], after: dict[str, float], weight_before: float, weight_after: float):
        total = max(weight_before + weight_after, 1e-12)
        return {k: (before.get(k, 0.0) * weight_before + after[k] * weight_after) / total for k in after}

    return EpochStats(loss_terms=mean(partial["loss_terms"], rest.loss_terms, partial["steps"], rest.steps_run),
                      accuracy=mean(partial["accuracy"], rest.accuracy, partial["images"], rest.images),
                      images=images, seconds=partial["seconds"] + rest.seconds, steps_done=rest.steps_done,
                      completed=rest.completed, steps_run=steps)


def _epoch_metrics(stats: EpochStats, val: dict[str, float] | None, test: dict[str, float],
                   optimizer) -> dict[str, float]:
    metrics = {f"train/{'loss' if k == 'loss' else 'loss_' + k}": v for k, v in stats.loss_terms.items()}
    metrics.update({f"train/acc_{k}": v for k, v in stats.accuracy.items()})
    metrics.update({f"val/acc_{k}": v for k, v in (val or {}).items()})
    metrics.update({f"test/epoch_acc_{k}": v for k, v in test.items()})
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    metrics["epoch_time_s"] = stats.seconds
    metrics["throughput_img_s"] = stats.throughput
    return metrics


def _epoch_header(classifier_names: list[str], has_val: bool) -> str:
    """The column names above the epoch lines (printed once)."""
    split = "val" if has_val else "test"
    names = " ".join(f"{_short(name):>5}" for name in [*classifier_names, "ensemble"])
    return f"{'epoch':>7}  {'loss':>6}  {split} top-1 %: {names}  {'time':>5} {'img/s':>6}"


def _short(name: str) -> str:
    return {"ensemble": "ens"}.get(name, name.replace("exit", "e"))


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float], has_val: bool) -> str:
    """One line per epoch under :func:`_epoch_header`, accuracies in %: within 80 columns for
    up to 5 classifiers and the ensemble."""
    prefix, split = ("val/acc_", "val") if has_val else ("test/epoch_acc_", "test")
    accs = " ".join(f"{100 * v:5.1f}" for k, v in metrics.items() if k.startswith(prefix))
    return (f"{f'{epoch}/{epochs}':>7}  {metrics['train/loss']:6.3f}  {' ' * len(f'{split} top-1 %: ')}{accs}  "
            f"{metrics['epoch_time_s']:4.0f}s {metrics['throughput_img_s']:6,.0f}")
