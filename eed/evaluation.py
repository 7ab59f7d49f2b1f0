"""Evaluation of a multi-exit network: one forward pass, then pure metrics on tensors.

Read top to bottom:

1. :func:`collect_outputs` runs the network once per batch (``torch.no_grad``) and
   keeps every classifier's logits, stacked as ``(k, N, C)``, plus the labels. That is the
   only pass over the data; everything after it is tensor arithmetic, vectorised over
   classifiers and samples.
2. Metric functions on tensors: top-k accuracy, the ensemble (mean logits of all k
   classifiers) and running ensembles (of the first j), expected calibration error, and
   the exit/main agreement counts of the paper's Fig. 2.
3. :class:`EvaluationReport` gathers them (plus the early-exit analysis of
   :mod:`eed.anytime`) and turns them into ``metrics.json``, ``anytime.csv``, figures and
   Rich tables.
4. :func:`run_evaluation` is the whole of ``eed evaluate``: resolve the checkpoint (a file
   or an MLflow run id), check it against the configured architecture and dataset, collect,
   report, write, log.

Accuracies and calibration errors are fractions in [0, 1], as the trainer logs them;
tables and figures show percent.

MLflow layout: each evaluation becomes a *child run* named ``evaluate`` of the training
run that made the checkpoint (tag ``mlflow.parentRunId``, which the MLflow UI nests under
the parent; tag ``eed.stage=evaluate``). A child rather than more metrics on the training
run, so that re-evaluating (another split, other thresholds) never overwrites what
training logged and each evaluation keeps its own files. A checkpoint that names no run
gets a stand-alone ``evaluate`` run in the configured experiment. The child run holds the
metrics of ``metrics.json`` flattened with ``/`` (``test/acc_main``,
``anytime/budget_0_02/accuracy``, ...) and every output file as an artifact.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from eed.anytime import AnytimeReport, ClassifierCosts, analyze, threshold_grid
from eed.progress import progress_bar, tracked

# --------------------------------------------------------------------------- 1. one pass


@dataclass
class Collected:
    """Every classifier's outputs over a split, on the CPU."""

    logits: Tensor                        # (k, N, C) float32; index -1 = main
    labels: Tensor                        # (N,) int64
    features: list[Tensor] | None = None  # F_1..F_k, each (N, D), only when asked for
    input_shape: tuple[int, ...] = ()     # one image's shape (C, H, W)

    @property
    def num_classifiers(self) -> int:
        return self.logits.shape[0]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[1]


def collect_outputs(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: torch.device | str, *,
                    with_features: bool = False, autocast: Callable[[], ContextManager] | None = None,
                    channels_last: bool = False) -> Collected:
    """One forward pass per batch; logits (and features) of every classifier for every sample.

    Outputs stay on ``device`` until the end (no per-batch synchronisation); labels are
    copied because some loaders reuse their label buffer. ``autocast`` is a callable
    returning a context manager (e.g. ``Runtime.autocast``); logits are kept in float32.
    """
    was_training = model.training
    model.eval()
    logit_batches: list[Tensor] = []
    label_batches: list[Tensor] = []
    feature_batches: list[list[Tensor]] = []
    input_shape: tuple[int, ...] = ()
    try:
        # no_grad, not inference_mode: FFCV's worker threads write into batch buffers that
        # would become inference tensors here, and in-place writes to those fail outside it.
        with torch.no_grad(), (autocast() if autocast else contextlib.nullcontext()):
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                input_shape = tuple(images.shape[1:])
                output = model(images)
                logit_batches.append(torch.stack(output.logits).float())
                label_batches.append(labels.to(device, non_blocking=True, copy=True))
                if with_features:
                    feature_batches.append([f.float() for f in output.features])
    finally:
        model.train(was_training)
    if not logit_batches:
        raise ValueError("the loader yielded no batches")
    features = None
    if with_features:
        features = [torch.cat(per_classifier).cpu() for per_classifier in zip(*feature_batches)]
    return Collected(logits=torch.cat(logit_batches, dim=1).cpu(),
                     labels=torch.cat(label_batches).long().cpu(),
                     features=features, input_shape=input_shape)


# --------------------------------------------------------------------------- 2. metrics on tensors


def ensemble_logits(logits: Tensor) -> Tensor:
    """Mean logits of all classifiers (the paper's G_z): (k, N, C) -> (N, C)."""
    return logits.mean(dim=0)


def running_ensemble_logits(logits: Tensor) -> Tensor:
    """Entry j-1 is the mean logits of the first j classifiers: (k, N, C) -> (k, N, C)."""
    counts = torch.arange(1, logits.shape[0] + 1, dtype=logits.dtype, device=logits.device)
    return logits.cumsum(dim=0) / counts[:, None, None]


def topk_correct(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Whether the label is among the k highest logits: (..., N, C) -> (..., N) bool."""
    if k == 1:
        return logits.argmax(dim=-1) == labels
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels[..., None]).any(dim=-1)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """Fraction of samples whose label is in the top k: (..., N, C) -> (...)."""
    return topk_correct(logits, labels, k).double().mean(dim=-1)


def top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 of each classifier, then of the ensemble of all of them: (k, N, C) -> (k+1,)."""
    return topk_accuracy(torch.cat([logits, ensemble_logits(logits)[None]]), labels)


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> Tensor:
    """ECE with ``bins`` equal-width confidence bins (lo, hi]: sum over bins of
    |sum of confidences - number correct| / N, i.e. the bin-weighted |accuracy - confidence|.
    (..., N, C) -> (...)."""
    confidence, predicted = logits.float().softmax(dim=-1).max(dim=-1)
    correct = (predicted == labels).double()
    batch_shape, n = confidence.shape[:-1], confidence.shape[-1]
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence is never 0 after softmax.
    bin_index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    flat_index = bin_index.reshape(-1, n)
    confidence_sum = torch.zeros(flat_index.shape[0], bins, dtype=torch.float64)
    correct_sum = torch.zeros_like(confidence_sum)
    confidence_sum.scatter_add_(1, flat_index, confidence.double().reshape(-1, n))
    correct_sum.scatter_add_(1, flat_index, correct.reshape(-1, n))
    return ((confidence_sum - correct_sum).abs().sum(dim=1) / n).reshape(batch_shape)


def agreement_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """Fig. 2: per exit, a 2x2 count matrix; rows = exit correct/incorrect, columns = main
    correct/incorrect. (k, N, C) -> (k-1, 2, 2) int64; each matrix sums to N."""
    correct = logits.argmax(dim=-1) == labels  # (k, N)
    exits, main = correct[:-1], correct[-1][None]
    both = (exits & main).sum(dim=1)
    exit_only = (exits & ~main).sum(dim=1)
    main_only = (~exits & main).sum(dim=1)
    neither = (~exits & ~main).sum(dim=1)
    return torch.stack([torch.stack([both, exit_only], dim=1), torch.stack([main_only, neither], dim=1)], dim=1)


# --------------------------------------------------------------------------- 3. the report


@dataclass
class OutputMetrics:
    """Top-1, top-5 and ECE of one output (a classifier, the ensemble or a running ensemble)."""

    name: str
    top1: float
    top5: float
    ece: float


@dataclass
class EvaluationReport:
    split: str
    num_samples: int
    names: list[str]                   # classifiers, exit1..main
    outputs: list[OutputMetrics]       # each classifier, then "ensemble"
    running: list[OutputMetrics]       # "upto_exit1" .. "upto_main": ensemble of the first j
    agreement: Tensor                  # (k-1, 2, 2), see agreement_counts
    anytime: AnytimeReport | None = None
    notes: list[str] = field(default_factory=list)  # what was skipped and why

    def metrics(self) -> dict[str, Any]:
        """The content of ``metrics.json``: small, flat-ish groups so that ``dvc exp show``
        and ``dvc metrics diff`` stay readable."""
        split_metrics: dict[str, float] = {}
        for prefix, attribute in (("acc", "top1"), ("top5", "top5"), ("ece", "ece")):
            split_metrics.update({f"{prefix}_{o.name}": getattr(o, attribute) for o in self.outputs})
        running: dict[str, float] = {}
        for prefix, attribute in (("acc", "top1"), ("top5", "top5"), ("ece", "ece")):
            running.update({f"{prefix}_{o.name}": getattr(o, attribute) for o in self.running})
        agreement = {
            name: dict(zip(("both_correct", "exit_only", "main_only", "both_wrong"), map(int, matrix.flatten())))
            for name, matrix in zip(self.names[:-1], self.agreement)
        }
        out: dict[str, Any] = {self.split: split_metrics, "running_ensemble": running, "agreement": agreement,
                               "num_samples": self.num_samples}
        if self.anytime is not None:
            out["anytime"] = self.anytime.metrics()
        return round_floats(out)


def summarize(collected: Collected, names: Sequence[str], split: str, ece_bins: int = 15) -> EvaluationReport:
    """Every accuracy/calibration number of a split, from its collected logits."""
    logits, labels = collected.logits, collected.labels
    if len(names) != logits.shape[0]:
        raise ValueError(f"{len(names)} names for {logits.shape[0]} classifiers")
    with_ensemble = torch.cat([logits, ensemble_logits(logits)[None]])
    running = running_ensemble_logits(logits)

    def rows(stack: Tensor, row_names: Sequence[str]) -> list[OutputMetrics]:
        top1 = topk_accuracy(stack, labels, 1).tolist()
        top5 = topk_accuracy(stack, labels, 5).tolist()
        ece = expected_calibration_error(stack, labels, ece_bins).tolist()
        return [OutputMetrics(*values) for values in zip(row_names, top1, top5, ece)]

    return EvaluationReport(split=split, num_samples=collected.num_samples, names=list(names),
                            outputs=rows(with_ensemble, [*names, "ensemble"]),
                            running=rows(running, [f"upto_{name}" for name in names]),
                            agreement=agreement_counts(logits, labels))


def round_floats(value: Any, digits: int = 8) -> Any:
    """Floats rounded to ``digits`` significant digits, recursively: 0.15000000000000002 -> 0.15
    in metrics files, far below any difference that matters."""
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [round_floats(item, digits) for item in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"acc_main": 0.7}}`` -> ``{"test/acc_main": 0.7}``; None values dropped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def report_tables(report: EvaluationReport) -> list[Table]:
    """Rich tables: per-output metrics, exit/main agreement, early-exit budgets."""
    costs = report.anytime.costs.standalone if report.anytime else None
    outputs = Table(title=f"{report.split} split: {report.num_samples} samples (accuracy, ECE in %)")
    for column in ("output", "top-1", "top-5", "ECE", "running ens. top-1", "GFLOPs"):
        outputs.add_column(column, justify="left" if column == "output" else "right")
    best = max(o.top1 for o in report.outputs)
    for i, output in enumerate(report.outputs):
        running = _pct(report.running[i].top1) if i < len(report.running) else ""
        gflops = f"{costs[i]:.4f}" if costs and i < len(costs) else ""
        top1 = _pct(output.top1)
        outputs.add_row(output.name, f"[bold]{top1}[/]" if output.top1 == best else top1, _pct(output.top5),
                        _pct(output.ece), running, gflops)
    tables = [outputs]
    if len(report.names) > 1:
        agreement = Table(title="Exit vs main (Fig. 2): sample counts")
        for column in ("exit", "both correct", "exit only", "main only", "both wrong"):
            agreement.add_column(column, justify="left" if column == "exit" else "right")
        for name, matrix in zip(report.names, report.agreement.tolist()):
            agreement.add_row(name, *(str(v) for v in (matrix[0][0], matrix[0][1], matrix[1][0], matrix[1][1])))
        tables.append(agreement)
    if report.anytime is not None and report.anytime.budgets:
        fit_split = report.anytime.fit_split
        budgets = Table(title=f"Early exit within a budget (threshold fitted on {fit_split})")
        columns = ["budget GFLOPs", "threshold", f"{report.split} GFLOPs", f"{report.split} top-1"]
        show_fit = fit_split != report.split  # the fitting split's accuracy, when it is another one
        for column in columns + ([f"{fit_split} top-1"] if show_fit else []):
            budgets.add_column(column, justify="right")
        for fit in report.anytime.budgets:
            row = [f"{fit.budget:g}", "infeasible" if fit.threshold is None else f"{fit.threshold:.3f}",
                   "—" if fit.gflops is None else f"{fit.gflops:.4f}", _pct(fit.accuracy)]
            budgets.add_row(*row, *([_pct(fit.fit_accuracy)] if show_fit else []))
        tables.append(budgets)
    return tables


# --------------------------------------------------------------------------- writing the outputs


def write_anytime_csv(report: AnytimeReport, path: Path) -> Path:
    """One row per threshold: threshold, gflops, accuracy, frac_<classifier>... (for ``dvc plots``)."""
    rows = report.curve.rows()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" for key, value in row.items()})
    return path


def write_outputs(report: EvaluationReport, out_dir: str | Path,
                  history: dict[str, list[tuple[int, float]]] | None = None) -> list[Path]:
    """``metrics.json``, ``anytime.csv`` and ``figures/*.png`` into ``out_dir``; with a
    training ``history``, also the Fig. 3/5 training curves. Returns the files written."""
    from eed.plots import plot_agreement, plot_anytime, plot_training_curves

    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(report.metrics(), indent=2) + "\n")
    written = [metrics_path]
    if len(report.names) > 1:
        written.append(plot_agreement(report.agreement, report.names[:-1], figures / "agreement.png"))
    if report.anytime is not None:
        written.append(write_anytime_csv(report.anytime, out_dir / "anytime.csv"))
        written.append(plot_anytime(report.anytime, figures / "anytime.png"))
    if history:
        written.extend(plot_training_curves(history, figures))
    return written


# --------------------------------------------------------------------------- 4. the whole command


class EvaluationError(RuntimeError):
    """The source cannot be evaluated: unknown run, no checkpoint in it, data mismatch."""


RUN_ID = re.compile(r"[0-9a-f]{32}")
# Tags a child run copies from its training run, so the same filters find both.
INHERITED_TAGS = ("method", "arch", "dataset", "scale", "seed", "dvc_exp")


@dataclass
class ResolvedSource:
    checkpoint: dict[str, Any]
    run_id: str | None      # the MLflow run that made the checkpoint, if known
    description: str        # for messages: the file, or "run <id> (checkpoints/best.pt)"


def resolve_source(source: str, tracking_uri: str | None, which: str = "best") -> ResolvedSource:
    """A checkpoint file, or an MLflow run id whose ``checkpoints/{which}.pt`` (falling back
    to the other of best/last) is downloaded. Unknown run ids are an :class:`EvaluationError`."""
    from eed.checkpoint import load_checkpoint

    path = Path(source)
    looks_like_path = path.suffix == ".pt" or "/" in source or "\\" in source
    if path.is_file() or (looks_like_path and not RUN_ID.fullmatch(source)):
        checkpoint = load_checkpoint(path)  # CheckpointError when missing or not ours
        return ResolvedSource(checkpoint, checkpoint.get("mlflow_run_id"), str(path))

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(source)
    except MlflowException:
        raise EvaluationError(f"{source!r} is neither a checkpoint file nor a run in the MLflow store "
                              f"{client.tracking_uri}") from None
    available = {Path(a.path).name for a in client.list_artifacts(source, "checkpoints")}
    preferred = [f"{which}.pt"] + [name for name in ("best.pt", "last.pt") if name != f"{which}.pt"]
    names = [name for name in preferred if name in available]
    if not names:
        raise EvaluationError(f"MLflow run {source} has no checkpoints/best.pt or checkpoints/last.pt artifact "
                              f"(did its training finish?)")
    # A progress bar for one local file is noise on the console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="eed-evaluate-") as tmp:
        local = client.download_artifacts(source, f"checkpoints/{names[0]}", tmp)
        checkpoint = load_checkpoint(local)
    return ResolvedSource(checkpoint, source, f"run {source} (checkpoints/{names[0]})")


def check_classes(checkpoint: dict[str, Any], class_names: Sequence[str], dataset: str) -> None:
    """A checkpoint trained on other classes must not be scored against these labels."""
    from eed.checkpoint import CheckpointError

    trained = list(checkpoint.get("class_names") or [])
    # (A different class count alone is caught by model_from_checkpoint's num_classes check.)
    if trained and trained != list(class_names):
        differing = next((i for i, (a, b) in enumerate(zip(trained, class_names)) if a != b), None)
        detail = (f"class {differing} is {trained[differing]!r} in the checkpoint, {class_names[differing]!r} here"
                  if differing is not None else f"{len(trained)} classes in the checkpoint, {len(class_names)} here")
        raise CheckpointError(f"the checkpoint was trained on other classes than dataset {dataset!r} ({detail})")


def metric_history(client: Any, run_id: str, prefixes: Sequence[str] = ("train/", "val/", "test/")
                   ) -> dict[str, list[tuple[int, float]]]:
    """A run's per-step metric history ``{name: [(step, value), ...]}`` from MLflow; a step
    logged twice (e.g. the final test metric on the last epoch's step) keeps its last value."""
    run = client.get_run(run_id)
    history = {}
    for name in run.data.metrics:
        if name.startswith(tuple(prefixes)):
            points = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
            history[name] = sorted({m.step: m.value for m in points}.items())
    return history


def log_child_run(files: Sequence[Path], out_dir: Path, metrics: dict[str, Any], *, stage: str, tracking_uri: str,
                  parent_run_id: str | None, experiment: str, split: str, source: str) -> str:
    """Log metrics (flattened with ``/``) and files (paths kept relative to ``out_dir``) as a
    run named ``stage`` nested under ``parent_run_id``, or stand-alone in ``experiment`` when
    there is no parent; returns the new run's id. Used by ``evaluate`` and ``rdm``."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    tags = {"eed.stage": stage, "split": split, "source": source}
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
        tags["mlflow.parentRunId"] = parent_run_id
        tags.update({k: v for k, v in parent.data.tags.items() if k in INHERITED_TAGS})
    else:
        from eed.tracking import ensure_experiment

        experiment_id = ensure_experiment(experiment, tracking_uri)
    run_id = client.create_run(experiment_id, run_name=stage, tags=tags).info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in flatten_metrics(metrics).items()])
        for path in files:
            folder = Path(path).relative_to(out_dir).parent
            client.log_artifact(run_id, str(path), None if folder == Path(".") else folder.as_posix())
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


@dataclass
class EvaluationResult:
    report: EvaluationReport
    files: list[Path]
    source: ResolvedSource
    mlflow_run_id: str | None = None  # the evaluate run, when logged


def run_evaluation(source: str, config: Any, out_dir: str | Path, *, split: str | None = None,
                   log: bool = True, which: str = "best", console: Console | None = None) -> EvaluationResult:
    """``eed evaluate``: score a checkpoint (file or MLflow run id) on a split of the
    configured dataset, write the outputs to ``out_dir`` and (``log``) log them to MLflow."""
    from eed import data as eed_data
    from eed.checkpoint import model_from_checkpoint
    from eed.data.manifest import load_manifest
    from eed.tracking import check_tracking_uri, resolve_tracking_uri
    from eed.train import setup_runtime

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    split = split or config.eval.split
    tracking_uri = resolve_tracking_uri(config) if (log or not Path(source).is_file()) else None
    if log:
        check_tracking_uri(tracking_uri)  # fail before the pass over the data, not after

    resolved = resolve_source(source, tracking_uri, which)
    manifest = load_manifest(config)
    check_classes(resolved.checkpoint, manifest.class_names, config.data.dataset)
    model = model_from_checkpoint(resolved.checkpoint, arch=config.model.arch, num_classes=manifest.num_classes)
    runtime = setup_runtime(config.train)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    names = model.classifier_names()

    def collect(name: str) -> Collected:
        loader = eed_data.make_loader(config, name, train=False, device=runtime.device)
        with progress_bar(console) as progress:
            batches = tracked(loader, progress, f"evaluating on {name}", len(loader))
            return collect_outputs(model, batches, runtime.device, autocast=runtime.autocast,
                                   channels_last=runtime.channels_last)

    collected = collect(split)
    report = summarize(collected, names, split, config.eval.ece_bins)

    # A baseline's curve is the main output alone: one point, but the same files for DVC.
    report.anytime = _anytime(model, collected, names, config, split, collect, report.notes)
    if model.num_classifiers == 1:
        report.notes.append("no exits (baseline): no agreement matrices; the early-exit curve is one point")

    history = None
    if resolved.run_id and tracking_uri:
        from mlflow.tracking import MlflowClient

        try:
            history = metric_history(MlflowClient(tracking_uri), resolved.run_id)
        except Exception as error:  # a moved or foreign store: the curves are a bonus
            report.notes.append(f"training curves skipped: run {resolved.run_id} not readable ({type(error).__name__})")
    files = write_outputs(report, out_dir, history)

    run_id = None
    if log:
        run_id = log_child_run(files, out_dir, report.metrics(), stage="evaluate", tracking_uri=tracking_uri,
                               parent_run_id=resolved.run_id, experiment=config.tracking.experiment,
                               split=split, source=resolved.description)
    return EvaluationResult(report, files, resolved, run_id)


def _anytime(model: nn.Module, collected: Collected, names: list[str], config: Any, split: str,
             collect: Callable[[str], Collected], notes: list[str]) -> AnytimeReport:
    """Early-exit curve on ``split``; budget thresholds fitted on the validation split."""
    from eed.flops import profile_model

    costs = ClassifierCosts.from_profile(profile_model(model, collected.input_shape[-1]))
    fit_logits = fit_labels = fit_split = None
    if config.eval.budgets:
        if split == "val":
            fit_logits, fit_labels, fit_split = collected.logits, collected.labels, "val"
        elif config.data.val_size > 0:
            validation = collect("val")
            fit_logits, fit_labels, fit_split = validation.logits, validation.labels, "val"
        else:
            notes.append("budgets not fitted: data.val_size is 0, so there is no validation split to fit on")
    return analyze(collected.logits, collected.labels, costs, threshold_grid(config.eval.thresholds), names,
                   config.eval.budgets, fit_logits, fit_labels, fit_split)
