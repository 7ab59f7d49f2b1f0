"""Training, in the style of torchvision's classification references: flat functions,
one checkpoint dict, resume.

``train(config)`` builds the model, loaders and objective from the typed config, runs
SGD epochs, validates every classifier and their ensemble after each epoch, logs all of
it to one MLflow run, and writes ``last.pt`` (every ``checkpoint_every`` epochs) and
``best.pt`` (best main-output accuracy on the validation split; test accuracy is only
reported). It runs the same code on CPU and CUDA; on CUDA it adds bf16 autocast and
channels_last. Under ``torchrun`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn

from eed.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from eed.config import Config, TrainConfig, flatten, to_yaml
from eed.evaluation import collect_outputs, top1_accuracy
from eed.models.multi_exit import MultiExitNet
from eed.models.registry import create_model
from eed.objectives import ExitEnsembleObjective
from eed.progress import RefreshClock, progress_bar

console = Console(stderr=True)

EXIT_CODE_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch, step and terms."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written. ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    """Where and how the computation runs: device, precision, layout, process group."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device (CUDA when available unless told), precision and the DDP process group.

    torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; then NCCL joins CUDA processes and gloo CPU ones.
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if use_cuda else "fp32")
    if precision == "fp16" and not use_cuda:
        raise RuntimeError("train.precision 'fp16' needs CUDA; use 'fp32' or 'bf16' on CPU")
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and use_cuda)
    return Runtime(device, autocast_dtype, channels_last, rank, world_size)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Generator states as tensors and plain values, so ``torch.load(weights_only=True)`` reads them."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def relaunch_under_torchrun(nproc: int, command: list[str]) -> None:
    """With ``nproc > 1`` outside torchrun, replace this process by torchrun running ``command``
    (arguments after the Python interpreter, e.g. ``["-m", "eed.cli", "train"]``) on one node."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={nproc}", *command])


# --------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Stepped once per optimisation step, whatever the schedule, so resume is uniform."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "step":
        milestones = [m * steps_per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    # One cycle: linear warm-up over the first quarter to lr, then linear decay to zero.
    # (A LambdaLR rather than OneCycleLR, which divides by zero on runs of a few steps.)
    warmup = max(1, total // 4)

    def one_cycle(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)


# --------------------------------------------------------------------------- epochs


@dataclass
class EpochStats:
    """Means over the steps run in one epoch (a resumed epoch counts only its remaining steps)."""

    loss_terms: dict[str, float]
    accuracy: dict[str, float]  # per classifier and "ensemble", on the augmented training batches
    images: int
    seconds: float
    steps_done: int
    completed: bool

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def batch_correct(logits: list[Tensor], target: Tensor) -> Tensor:
    """Correct predictions of each classifier and of the ensemble (mean logits): shape (k+1,)."""
    stacked = torch.stack([z.detach().float() for z in logits])
    ensemble = stacked.mean(0, keepdim=True)
    predictions = torch.cat([stacked, ensemble]).argmax(-1)
    return (predictions == target).sum(1)


def train_one_epoch(model: nn.Module, objective: ExitEnsembleObjective, loader, optimizer, scheduler,
                    runtime: Runtime, *, epoch: int, classifier_names: list[str], skip_steps: int = 0,
                    should_stop: Callable[[], bool] = lambda: False,
                    progress: Progress | None = None) -> EpochStats:
    model.train()
    steps = len(loader)
    term_sums: dict[str, Tensor] = {}
    correct = torch.zeros(len(classifier_names) + 1, dtype=torch.long, device=runtime.device)
    images = 0
    task = progress.add_task(f"epoch {epoch}", total=steps, completed=skip_steps, info="") if progress else None
    started = time.perf_counter()
    clock = RefreshClock()
    step = skip_steps
    for step_index, (inputs, target) in enumerate(loader):
        if step_index < skip_steps:  # resuming mid-epoch: same order, already trained on
            continue
        inputs = inputs.to(runtime.device, non_blocking=True)
        target = target.to(runtime.device, non_blocking=True)
        if runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            output = model(inputs)
            result = objective(output, target)
        loss = result.total
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in result.terms.items())
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at epoch {epoch}, step {step_index + 1}/{steps} "
                                     f"({terms}); the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for name, value in result.terms.items():
            term_sums[name] = term_sums.get(name, 0) + value.detach()
        term_sums["loss"] = term_sums.get("loss", 0) + loss.detach()
        correct += batch_correct(output.logits, target)
        images += target.shape[0]
        step = step_index + 1
        if progress is not None and (clock.due() or step == steps):
            # Rendered here, between steps (see eed.progress); loss.item() waits for the
            # device, so it too runs only this often.
            rate = images / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=step, info=f"loss {loss.item():.3f} · {rate:,.0f} img/s", refresh=True)
        if should_stop():
            break
    seconds = time.perf_counter() - started
    if progress is not None:
        progress.remove_task(task)
        progress.refresh()
    run_steps = max(step - skip_steps, 1)
    totals = torch.stack([term_sums[k] for k in term_sums]) if term_sums else torch.zeros(0)
    counts = torch.cat([correct.float(), torch.tensor([float(images)], device=runtime.device)])
    if runtime.distributed:  # sums over ranks: every rank saw its own shard
        totals = totals.to(runtime.device)
        dist.all_reduce(totals)
        dist.all_reduce(counts)
        totals /= runtime.world_size
    all_images = int(counts[-1].item())
    names = classifier_names + ["ensemble"]
    return EpochStats(
        loss_terms={k: float(v) / run_steps for k, v in zip(term_sums, totals.tolist())},
        accuracy={n: float(c) / max(all_images, 1) for n, c in zip(names, counts[:-1].tolist())},
        images=all_images, seconds=seconds, steps_done=step, completed=step == steps,
    )


def validate(model: nn.Module, loader, runtime: Runtime, classifier_names: list[str]) -> dict[str, float]:
    """Top-1 of every classifier and of the ensemble of all of them (mean logits)."""
    collected = collect_outputs(_unwrap(model), loader, runtime.device, autocast=runtime.autocast,
                                channels_last=runtime.channels_last)
    accuracies = top1_accuracy(collected.logits, collected.labels)
    return {name: float(acc) for name, acc in zip(classifier_names + ["ensemble"], accuracies)}


def _unwrap(model: nn.Module) -> MultiExitNet:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- signals


class GracefulStop:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum
        console.print(f"[yellow]{signal.Signals(signum).name}: finishing the current step, then checkpointing…")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        return self.signal is not None


# --------------------------------------------------------------------------- the run


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


def _resume_checkpoint(resume: str | Path | bool, last_path: Path, config: Config) -> dict[str, Any] | None:
    """``resume``: True/"auto" continues ``last.pt`` when it holds an unfinished run of the same
    config; a path continues that checkpoint; False starts fresh."""
    if resume is False or resume == "never":
        return None
    if resume not in (True, "auto"):
        return load_checkpoint(resume)
    if not last_path.is_file():
        return None
    checkpoint = load_checkpoint(last_path)
    same = checkpoint["config"] == config.model_dump()
    unfinished = checkpoint["epoch"] < config.train.epochs or checkpoint.get("step_in_epoch", 0) > 0
    if resume is True and not same:
        raise CheckpointError(f"{last_path} was made with another configuration; cannot resume it")
    return checkpoint if same and unfinished else None


def train(config: Config, out_dir: str | Path, *, resume: str | Path | bool = "auto") -> TrainResult:
    """Train ``config`` and write checkpoints/figures to ``out_dir``; see the module docstring."""
    from eed import data as eed_data
    from eed import tracking

    out_dir = Path(out_dir)
    runtime = setup_runtime(config.train)
    checkpoint_dir = out_dir / "checkpoints"
    last_path, best_path = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    resumed = _resume_checkpoint(resume, last_path, config)

    tracking_uri = None
    if config.tracking.enabled and runtime.is_main:
        tracking_uri = tracking.resolve_tracking_uri(config)
        tracking.check_tracking_uri(tracking_uri)  # before any expensive work

    seed_everything(config.seed + runtime.rank, config.train.deterministic)
    manifest = eed_data.load_manifest(config)
    has_val = config.data.val_size > 0
    train_loader = eed_data.make_loader(config, "train", train=True, device=runtime.device,
                                        distributed=runtime.distributed)
    val_loader = eed_data.make_loader(config, "val" if has_val else "test", train=False, device=runtime.device)
    exits = config.method != "baseline"
    model = create_model(config.model.arch, manifest.num_classes, config.model.width, exits=exits).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    classifier_names = model.classifier_names()
    objective = ExitEnsembleObjective(config.method, config.loss, model.num_classifiers)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, len(train_loader))

    start_epoch, skip_steps, best_metric, run_id = 0, 0, -1.0, None
    if resumed is not None:
        if resumed["arch"] != config.model.arch or resumed["num_classes"] != manifest.num_classes:
            raise CheckpointError(f"cannot resume a {resumed['arch']} checkpoint with {resumed['num_classes']} "
                                  f"classes into {config.model.arch} with {manifest.num_classes}")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        restore_rng_state(resumed["rng"])
        start_epoch, skip_steps = resumed["epoch"], resumed.get("step_in_epoch", 0)
        best_metric, run_id = resumed.get("best_metric", -1.0), resumed.get("mlflow_run_id")
        console.print(f"[cyan]Resuming from epoch {start_epoch}"
                      + (f", step {skip_steps}" if skip_steps else "") + f" ({last_path})")

    train_model: nn.Module = model
    if runtime.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if config.train.compile:
        train_model = torch.compile(train_model)

    logger = _RunLogger(config, tracking_uri, run_id) if runtime.is_main and tracking_uri else None
    history: dict[str, list[tuple[int, float]]] = logger.history() if logger else {}

    def checkpoint_dict(epoch: int, step_in_epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "arch": config.model.arch, "num_classes": manifest.num_classes, "width": config.model.width,
            "exits": exits, "class_names": list(manifest.class_names), "config": config.model_dump(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
            "metrics": metrics, "best_metric": best_metric,
            "mlflow_run_id": logger.run_id if logger else None,
        }

    train_loader.warmup(console=console)  # FFCV's one-off JIT compile, kept out of epoch timings
    val_split = "val" if has_val else "test"
    epoch = start_epoch
    try:
        with GracefulStop() as stop, progress_bar(console, runtime.is_main) as progress:
            for epoch in range(start_epoch + 1, config.train.epochs + 1):
                train_loader.set_epoch(epoch)
                stats = train_one_epoch(train_model, objective, train_loader, optimizer, scheduler, runtime,
                                        epoch=epoch, classifier_names=classifier_names,
                                        skip_steps=skip_steps if epoch == start_epoch + 1 else 0,
                                        should_stop=stop.requested, progress=progress)
                if not stats.completed:  # a signal arrived mid-epoch
                    if runtime.is_main:
                        save_checkpoint(checkpoint_dict(epoch - 1, stats.steps_done, {}), last_path)
                    if logger:
                        logger.end("KILLED")
                    name = signal.Signals(stop.signal).name
                    raise TrainingInterrupted(f"{name} at epoch {epoch}, step {stats.steps_done}: checkpoint "
                                              f"written to {last_path}; re-run to resume", EXIT_CODE_SIGNAL[stop.signal])
                if runtime.distributed:  # BN statistics drift per rank after the last step: take rank 0's
                    for buffer in model.buffers():
                        dist.broadcast(buffer, src=0)
                val = validate(train_model, val_loader, runtime, classifier_names)
                metrics = _epoch_metrics(stats, val, val_split, optimizer)
                if logger:
                    logger.log_epoch(metrics, epoch)
                for name, value in metrics.items():
                    history.setdefault(name, []).append((epoch, value))
                if runtime.is_main:
                    console.print(_epoch_line(epoch, config.train.epochs, metrics, val_split))
                    # Select on the validation split only; without one, the last epoch is "best".
                    if not has_val or val["main"] > best_metric:
                        best_metric = val["main"]
                        save_checkpoint(checkpoint_dict(epoch, 0, metrics), best_path)
                    if epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs:
                        save_checkpoint(checkpoint_dict(epoch, 0, metrics), last_path)
        result = TrainResult(logger.run_id if logger else None, out_dir, last_path, best_path, epoch, history,
                             model=model)
        if runtime.is_main:
            result.test_metrics = _final_test(config, runtime, best_path, classifier_names, eed_data)
            write_summary(result, out_dir)
            if logger:
                logger.finish(result, config, model, manifest)
        return result
    except NonFiniteLossError:
        if logger:
            logger.end("FAILED")
        raise
    except TrainingInterrupted:
        raise
    except BaseException:
        if logger:
            logger.end("FAILED")
        raise
    finally:
        if runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _final_test(config: Config, runtime: Runtime, best_path: Path, names: list[str], eed_data) -> dict[str, float]:
    """Test accuracy of the selected (best-on-validation) weights; reported, never used to choose."""
    from eed.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(best_path)).to(runtime.device)
    test_loader = eed_data.make_loader(config, "test", train=False, device=runtime.device)
    accuracy = validate(model, test_loader, runtime, names)
    return {f"test/acc_{name}": value for name, value in accuracy.items()}


def write_summary(result: TrainResult, out_dir: Path) -> None:
    """``metrics.json`` (final test accuracy of the selected weights, last epoch's values) and
    ``history.csv`` (one row per epoch), the files DVC shows as metrics and plots."""
    import csv
    import json

    last = {name: points[-1][1] for name, points in result.history.items() if points}
    summary = {"test": {k.split("/", 1)[1]: v for k, v in result.test_metrics.items()},
               "last_epoch": {k.replace("/", "_"): v for k, v in last.items()},
               "epochs": result.epochs_completed}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    epochs = sorted({step for points in result.history.values() for step, _ in points})
    columns = sorted(result.history)
    with open(out_dir / "history.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *[c.replace("/", "_") for c in columns]])
        values = {c: dict(result.history[c]) for c in columns}
        for epoch in epochs:
            writer.writerow([epoch, *[values[c].get(epoch, "") for c in columns]])


def _epoch_metrics(stats: EpochStats, val: dict[str, float], split: str, optimizer) -> dict[str, float]:
    metrics = {f"train/{'loss' if k == 'loss' else 'loss_' + k}": v for k, v in stats.loss_terms.items()}
    metrics.update({f"train/acc_{k}": v for k, v in stats.accuracy.items()})
    metrics.update({f"{split}/acc_{k}": v for k, v in val.items()})
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    metrics["epoch_time_s"] = stats.seconds
    metrics["throughput_img_s"] = stats.throughput
    return metrics


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float], split: str) -> str:
    accs = " ".join(f"{k.split('acc_')[1]} {v:.3f}" for k, v in metrics.items() if k.startswith(f"{split}/acc_"))
    return (f"epoch {epoch}/{epochs}  loss {metrics['train/loss']:.3f}  {split}: {accs}  "
            f"({metrics['epoch_time_s']:.0f} s, {metrics['throughput_img_s']:,.0f} img/s)")


class _RunLogger:
    """The MLflow side of a run: one run per training, resumed runs continue it."""

    def __init__(self, config: Config, tracking_uri: str, run_id: str | None):
        import mlflow
        from mlflow.tracking import MlflowClient

        from eed import tracking

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        if run_id is None:
            experiment_id = tracking.ensure_experiment(config.tracking.experiment, tracking_uri)
            run = self.client.create_run(experiment_id, tags=tracking.run_tags(config),
                                         run_name=f"{config.method}-{config.model.arch}-s{config.seed}")
            self.run_id = run.info.run_id
            params = flatten(config)
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()])
            self.client.log_text(self.run_id, to_yaml(config), "config.yaml")
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def history(self) -> dict[str, list[tuple[int, float]]]:
        run = self.client.get_run(self.run_id)
        return {name: [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, name)]
                for name in run.data.metrics}

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])

    def finish(self, result: TrainResult, config: Config, model: MultiExitNet, manifest) -> None:
        from mlflow.entities import Metric

        from eed.plots import plot_training_curves
        from eed.tracking import log_model

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, result.epochs_completed)
                                                    for k, v in result.test_metrics.items()])
        figures = plot_training_curves(result.history, result.out_dir / "figures")
        for figure in figures:
            self.client.log_artifact(self.run_id, str(figure), "figures")
        for checkpoint in (result.last_checkpoint, result.best_checkpoint):
            self.client.log_artifact(self.run_id, str(checkpoint), "checkpoints")
        log_model(self.run_id, model, config, self.tracking_uri)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
