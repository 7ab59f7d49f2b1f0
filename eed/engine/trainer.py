"""Training orchestration: ``train(config, out_dir)`` builds the set-up (:func:`build_training`),
runs SGD epochs (:func:`eed.engine.loops.train_one_epoch`), validates every classifier and
their ensemble after each epoch, logs all of it to one MLflow run, and writes ``last.pt``
(every ``checkpoint_every`` epochs) and ``best.pt`` (best main-output accuracy on the
validation split; without one, the last epoch).

Test accuracy is reported, never used to choose: every epoch as ``test/epoch_acc_*``; at the
end as ``test/acc_*``, the weights of ``best.pt``, and as ``test/max_acc_*``, each output's
maximum over the epochs, which is what the paper and the official release report (selected
on test, hence optimistic; :data:`~eed.engine.run_record.METRIC_MEANINGS`). The same code runs
on CPU and CUDA; under ``torchrun`` it trains with DistributedDataParallel, and rank 0 alone
writes files, prints and logs (decided once, in :func:`train`).

A run goes through phases recorded in ``last.pt`` (:data:`~eed.engine.checkpoint.PHASES`):
``epochs``, then ``final`` (the final test, the stage's callbacks, the logged model), then
``done``. A re-run continues the phase it was in, into the same MLflow run; an epoch reaches
the store only once its checkpoint is on disk, and only the steps the store lacks are logged
(README, "Reliability"). What a stage writes at the end (summaries) it passes as a
:class:`Callback`; figures are drawn by a later stage, so that a change to a figure never
retrains.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from eed import tracking
from eed.config import Config, flatten, require_resolved
from eed.engine import run_record
from eed.engine.checkpoint import Checkpoint, TrainState, resume_checkpoint
from eed.engine.epochs import epoch_header, epoch_line, epoch_metrics, partial_record, whole_epoch
from eed.engine.loops import train_one_epoch, validate
from eed.engine.runtime import Runtime, setup_runtime
from eed.engine.setup import Setup, build_training
from eed.engine.signals import GracefulStop
from eed.errors import EXIT_CODE_SIGNAL, NonFiniteLossError, TrainingInterrupted
from eed.models.export import servable
from eed.models.from_config import resolve_architecture
from eed.models.multi_exit import MultiExitNet
from eed.paths import ensure_free_space, ensure_writable, training_lock
from eed.progress import progress_bar


@dataclass
class TrainResult:
    run_id: str | None
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    epochs_completed: int
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)  # rank 0's final test; empty on other ranks
    model: MultiExitNet | None = None  # the trained network (final weights), for API users


class Callback:
    """Hooks a stage passes to :func:`train`, in the spirit of Lightning's callbacks."""

    def on_train_start(self, setup: Setup) -> None:
        """Everything is built, before the first checkpoint or step (every rank)."""

    def on_epoch_saved(self, epoch: int, history: dict[str, list[tuple[int, float]]], logger: tracking.Logger) -> None:
        """Rank 0, after epoch ``epoch`` is in ``last.pt`` and its metrics in the store (``history``:
        every finished epoch's metrics; ``logger``: the training run)."""

    def on_train_end(self, result: TrainResult) -> None:
        """Rank 0, in the final phase, after the final test and before the run is FINISHED: an
        interruption here calls it again on the re-run, so it must be idempotent."""


@dataclass
class CheckpointFiles:
    """``last.pt``, ``best.pt`` and ``best.pt.pending`` (best.pt while it is replaced); written
    only when ``writes`` (rank 0)."""

    folder: Path
    writes: bool

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def pending(self) -> Path:
        return self.folder / "best.pt.pending"

    def check_writable(self) -> None:
        if self.writes:
            ensure_writable(self.folder)

    def check_free_space(self, needed_bytes: int) -> None:
        if self.writes:
            ensure_free_space(self.folder, needed_bytes, "three checkpoints")

    def save_last(self, checkpoint: Checkpoint) -> None:
        if self.writes:
            checkpoint.save(self.last)

    def save_pending_best(self, checkpoint: Checkpoint) -> None:
        if self.writes:
            checkpoint.save(self.pending)

    def promote_best(self) -> None:
        """best.pt is "best" only once last.pt knows it: promoted after last.pt is written."""
        if self.writes and self.pending.is_file():
            self.pending.replace(self.best)

    def settle_pending(self, resumed: Checkpoint | None) -> None:
        """A best.pt.pending left by an interruption: promote it when the resumed checkpoint counts
        its epoch as the best, else drop it (its epoch was lost and is trained again)."""
        if not (self.writes and self.pending.is_file()):
            return
        if resumed is not None and Checkpoint.load(self.pending).epoch == resumed.state.best_epoch:
            self.pending.replace(self.best)
        else:
            self.pending.unlink()

    def what_is_kept(self) -> str:
        """What a failed step leaves on disk, claiming a kept checkpoint only when it exists."""
        unsaved = "the weights it changed are not saved"
        if self.last.is_file():
            return f"{unsaved}; {self.last} is kept"
        return f"{unsaved}, and no checkpoint was written before ({self.last} does not exist)"


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: str | Path | bool = "auto",
    callbacks: Sequence[Callback] = (),
    console: Console | None = None,
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (``checkpoints/``); see the module docstring. ``resume``:
    see :func:`~eed.engine.checkpoint.resume_checkpoint`."""
    config = resolve_architecture(config)
    runtime = setup_runtime(config.train)
    main = runtime.is_main  # rank 0 alone writes files, prints and logs: decided here, once
    console = console or Console(stderr=True, quiet=not main)
    tracking_uri = _checked_tracking_uri(config) if config.tracking.enabled and main else None
    # One training per folder at a time: two would log into one run and overwrite each other's checkpoints.
    with training_lock(out_dir) if main else contextlib.nullcontext():
        return _train(config, runtime, Path(out_dir), resume, callbacks, console, tracking_uri)


def _train(
    config: Config,
    runtime: Runtime,
    out_dir: Path,
    resume: str | Path | bool,
    callbacks: Sequence[Callback],
    console: Console,
    tracking_uri: str | None,
) -> TrainResult:
    main = runtime.is_main
    files = CheckpointFiles(out_dir / "checkpoints", writes=main)
    resumed = resume_checkpoint(resume, files.last, config)
    files.check_writable()  # an unusable folder fails now, not after an epoch
    setup = build_training(config, runtime)
    try:
        files.check_free_space(3 * _checkpoint_bytes(setup))  # last.pt, best.pt and best.pt.pending
        for callback in callbacks:
            callback.on_train_start(setup)
        state = TrainState()
        if resumed is not None:
            setup.restore(resumed)
            state = TrainState.from_checkpoint(resumed)
            console.print(
                f"[cyan]Resuming from epoch {state.epoch}"
                + (f", step {state.step}" if state.step else "")
                + f" ({files.last})"
            )
        logger = _open_run(setup, state, tracking_uri, files.last, console) if tracking_uri else tracking.NullLogger()
        files.settle_pending(resumed)
        return _Training(setup, files, logger, state, callbacks, console, out_dir, main).run(fresh=resumed is None)
    finally:
        setup.close()


def _checked_tracking_uri(config: Config) -> str:
    """The store's URI, checked before any expensive work."""
    tracking_uri = tracking.resolve_tracking_uri(config)
    tracking.check_tracking_uri(tracking_uri)
    return tracking_uri


def _open_run(
    setup: Setup, state: TrainState, tracking_uri: str, last: Path, console: Console
) -> tracking.MlflowLogger:
    """The run of this training: continued when the checkpoint names one, or a run killed before its
    first checkpoint (adopted), else a new one; with its params, tags and datasets. ``state``
    gets its run id, and its history the store's when the checkpoint holds none. A checkpoint's run
    that the store no longer has (deleted, or tracking.uri changed) is continued into a new run,
    which the checkpoint's history fills: nothing is lost."""
    config = setup.config
    if state.run_id and not tracking.run_exists(tracking_uri, state.run_id):
        console.print(
            f"[yellow]note:[/] run {state.run_id} of {last} is not an active run of {tracking_uri} "
            "(deleted, or tracking.uri changed): continuing into a new run, with every epoch so far"
        )
        state.run_id = None
    run_id = state.run_id or run_record.orphan_run(tracking_uri, last)
    logger = tracking.MlflowLogger.for_training(
        config, tracking_uri, run_id, description=run_record.run_description(config, setup.objective.describe())
    )
    if run_id is None:
        logger.set_tags({run_record.CHECKPOINT_TAG: str(last.resolve())})
    elif state.run_id is None:  # adopted: the kill may have come before its params were logged (same values)
        logger.log_params(flatten(config))
    logger.log_datasets(list(run_record.dataset_records(config, setup.manifest).values()))
    state.run_id = logger.run_id
    return logger


def _checkpoint_bytes(setup: Setup) -> int:
    """About the size of one checkpoint: the weights and buffers, SGD's momentum of every
    parameter, and 1 MiB for the rest."""
    tensors = [*setup.model.state_dict().values(), *setup.model.parameters()]
    return sum(t.numel() * t.element_size() for t in tensors) + 2**20


class _Training:
    """One run of the phases over a built set-up; :meth:`run` reads top to bottom."""

    def __init__(
        self,
        setup: Setup,
        files: CheckpointFiles,
        logger: tracking.Logger,
        state: TrainState,
        callbacks: Sequence[Callback],
        console: Console,
        out_dir: Path,
        main: bool,
    ):
        self.setup, self.files, self.logger, self.state = setup, files, logger, state
        self.callbacks, self.console, self.out_dir, self.main = callbacks, console, out_dir, main
        self.config = setup.config
        self.epochs = require_resolved(self.config.train.epochs, "train.epochs")
        # The checkpoint's history is the record of every finished epoch (it matches its weights); the
        # store gets an epoch only once its checkpoint is on disk, and only the steps it lacks.
        in_store = logger.history()
        self.stored = {name: {step for step, _ in points} for name, points in in_store.items()}
        if not state.history:  # (checkpoints written before eed kept the history)
            state.history = in_store
        self.stop = GracefulStop(console)  # catches signals inside run()

    def run(self, fresh: bool) -> TrainResult:
        try:
            with (
                self.stop,
                progress_bar(self.console, self.main) as progress,
                self.logger.system_metrics(),
            ):
                if fresh:  # the run id on disk before anything can be lost
                    self.files.save_last(self.snapshot())
                self.sync_store()  # epochs the checkpoint holds that a kill kept from the store
                if self.state.phase == "epochs":
                    self.train_epochs(progress)
                return self.final_phase()
        except TrainingInterrupted:
            raise  # the run already ended KILLED
        except BaseException:
            self.logger.finish("FAILED")
            raise

    # ------------------------------------------------------------------ the epochs

    def train_epochs(self, progress) -> None:
        start, skip = self.state.epoch, self.state.step
        self.setup.train_loader.warmup(console=self.console)  # FFCV's one-off JIT compile, kept out of epoch timings
        self.stop_if_requested("during the loader warm-up", start, skip, self.state.partial_epoch)
        for epoch in range(start + 1, self.epochs + 1):
            self.train_epoch(epoch, skip if epoch == start + 1 else 0, progress, first=epoch == start + 1)

    def train_epoch(self, epoch: int, skip: int, progress, first: bool) -> None:
        setup, config = self.setup, self.config
        setup.train_loader.set_epoch(epoch)
        try:
            stats = train_one_epoch(
                setup.train_model,
                setup.objective,
                setup.train_loader,
                setup.optimizer,
                setup.scheduler,
                setup.runtime,
                epoch=epoch,
                classifier_names=setup.classifier_names,
                skip_steps=skip,
                should_stop=self.stop.requested,
                progress=progress,
            )
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"{error}; {self.files.what_is_kept()}") from None
        if skip and self.state.partial_epoch is not None:
            stats = whole_epoch(self.state.partial_epoch, stats)  # the epoch's metrics over all of its steps
        if not stats.completed:  # a signal arrived mid-epoch
            self.stop_if_requested(
                f"at epoch {epoch}, step {stats.steps_done}", epoch - 1, stats.steps_done, partial_record(stats)
            )
        setup.runtime.sync_buffers(setup.model)
        test = validate(setup.train_model, setup.test_loader, setup.runtime, setup.classifier_names)
        val = (
            validate(setup.train_model, setup.val_loader, setup.runtime, setup.classifier_names)
            if setup.val_loader is not None
            else None
        )
        metrics = epoch_metrics(stats, val, test, setup.optimizer.param_groups[0]["lr"])
        self.record(epoch, metrics, test, val, first)
        if epoch == self.epochs:
            self.state.phase = "final"
        if epoch % config.train.checkpoint_every == 0 or epoch == self.epochs or self.stop.requested():
            self.commit(epoch)  # (checkpoint_every > 1 and a signal: keep this epoch rather than lose it)
        self.stop_if_requested(f"after epoch {epoch}", epoch)

    def record(
        self, epoch: int, metrics: dict[str, float], test: dict[str, float], val: dict[str, float] | None, first: bool
    ) -> None:
        """The epoch into the history and on the console (under a header before this process's first
        epoch); best.pt.pending when it is the best so far
        (selected on the validation split only; without one, the last epoch is "best")."""
        state = self.state
        for name, value in test.items():
            if name not in state.test_max or value > state.test_max[name][0]:
                state.test_max[name] = [value, epoch]
        for name, value in metrics.items():
            state.history.setdefault(name, []).append((epoch, value))
        state.epoch, state.step, state.partial_epoch = epoch, 0, None
        has_val = val is not None
        if first:
            self.console.print(epoch_header(self.setup.classifier_names, has_val), highlight=False)
        self.console.print(epoch_line(epoch, self.epochs, metrics, has_val), highlight=False)
        if val is None or val["main"] > state.best_metric:
            state.best_metric, state.best_epoch = (val if has_val else test)["main"], epoch
            self.files.save_pending_best(self.snapshot())

    # ------------------------------------------------------------------ the end

    def final_phase(self) -> TrainResult:
        """The selected weights' test accuracy, the stage's callbacks, the model and the test metrics
        in the store, FINISHED, then last.pt says "done" (a kill before that re-runs this phase)."""
        epoch = self.epochs
        result = TrainResult(
            self.logger.run_id,
            self.out_dir,
            self.files.last,
            self.files.best,
            epoch,
            self.state.history,
            model=self.setup.model,
        )
        if not self.main:
            return result
        selected = Checkpoint.load(self.files.best)
        selected_model = selected.model().to(self.setup.runtime.device)
        result.test_metrics = self.final_test(selected_model)
        self.stop_if_requested("during the final test", epoch)
        for callback in self.callbacks:
            callback.on_train_end(result)
        self.log_results(result, selected_model, selected.epoch)
        self.logger.finish("FINISHED")
        self.state.phase = "done"
        self.files.save_last(self.snapshot())
        return result

    def final_test(self, selected: MultiExitNet) -> dict[str, float]:
        """Test accuracy of the selected weights, and each output's maximum over the epochs;
        reported, never used to choose."""
        accuracy = validate(selected, self.setup.test_loader, self.setup.runtime, self.setup.classifier_names)
        metrics = {f"test/acc_{name}": value for name, value in accuracy.items()}
        metrics.update({f"test/max_acc_{name}": best for name, (best, _) in self.state.test_max.items()})
        metrics.update({f"test/max_acc_epoch_{name}": epoch for name, (_, epoch) in self.state.test_max.items()})
        return metrics

    def log_results(self, result: TrainResult, selected: MultiExitNet, selected_epoch: int) -> None:
        """Checkpoints, as the model the weights the test metrics are of (best.pt, not the last
        epoch's), then the test metrics, linked to that model and to the test set (those the store
        lacks: a re-run after an interruption here logs none twice). A signal stops between them."""
        config, step = self.config, result.epochs_completed
        self.logger.set_tags(run_record.meaning_tags(config, selected_epoch))
        for checkpoint in (result.last_checkpoint, result.best_checkpoint):
            self.logger.log_artifact(checkpoint, "checkpoints")
        self.stop_if_requested("while logging the results", step)
        missing = {k: v for k, v in result.test_metrics.items() if step not in self.stored.get(k, set())}
        model_id = None
        if missing:  # the model and its metrics go together: a re-run that lacks none logs no second model
            model_id = self.logger.log_model(
                *servable(selected, run_record.example_images(config)),
                metadata=run_record.model_metadata(config, self.setup.manifest, selected, selected_epoch),
            )
            self.stop_if_requested("while logging the results", step)
        test_set = run_record.dataset_records(config, self.setup.manifest)["test"]
        self.logger.log_metrics(missing, step, model_id=model_id, dataset=test_set)

    # ------------------------------------------------------------------ checkpoints, store, signals

    def snapshot(self, epoch: int | None = None, step: int = 0, partial: dict | None = None) -> Checkpoint:
        state = (
            self.state
            if epoch is None
            else TrainState(**{**vars(self.state), "epoch": epoch, "step": step, "partial_epoch": partial})
        )
        return state.to_checkpoint(self.setup.network, self.setup.model, self.config, self.setup.resume_state())

    def commit(self, epoch: int) -> None:
        """last.pt, then best.pt (promoted from pending), then the store: an interruption anywhere
        in between leaves a state the re-run completes."""
        self.files.save_last(self.snapshot())
        self.files.promote_best()
        self.sync_store()
        if self.main:
            for callback in self.callbacks:
                callback.on_epoch_saved(epoch, self.state.history, self.logger)

    def sync_store(self) -> None:
        """Log every history point the store lacks, in step order (one pass over the history)."""
        missing: dict[int, dict[str, float]] = {}
        for name, points in self.state.history.items():
            logged = self.stored.get(name, set())
            for step, value in points:
                if step not in logged:
                    missing.setdefault(step, {})[name] = value
        for step in sorted(missing):
            self.logger.log_metrics(missing[step], step)
            for name in missing[step]:
                self.stored.setdefault(name, set()).add(step)

    def stop_if_requested(self, where: str, epoch_done: int, steps_done: int = 0, partial: dict | None = None) -> None:
        """A signal arrived: checkpoint where we are, end the run KILLED, exit 143/130."""
        received = self.stop.signal
        if received is None:  # none arrived (self.stop.requested() is False)
            return
        self.files.save_last(self.snapshot(epoch_done, steps_done, partial))
        self.sync_store()
        self.logger.finish("KILLED")
        name = signal.Signals(received).name
        raise TrainingInterrupted(
            f"{name} {where}: checkpoint written to {self.files.last}; re-run to resume",
            EXIT_CODE_SIGNAL[signal.Signals(received)],
        )
