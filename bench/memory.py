"""6. Peak resident memory (max RSS) of a training process: params.yaml's defaults
(resnet18 width 16, method eed, batch 128, 20,000-image training subset).

Each measurement is a fresh child process (``python bench/memory.py child ...``) that reports
its peak RSS when it ends: ``VmHWM`` of ``/proc/self/status``, the high-water mark of its own
address space. Not ``getrusage``: on Linux ``ru_maxrss`` (RUSAGE_SELF in the child as well as
RUSAGE_CHILDREN in the parent) keeps the high-water mark of the process image replaced by
``exec``, i.e. the parent's RSS at fork (~0.9 GiB here, since the parent has imported torch
and FFCV), which then hides any child that stays below it. ``ru_maxrss`` is recorded in the
JSON for reference. Variants:

* ``imports + model``: Python, torch, eed.engine and eed.data imported, the trainer's set-up
  built (``eed.engine.setup.build_training``: the model as configured, objective, SGD and
  schedule, and the FFCV train/test/val loaders made but never iterated: no batch read); no
  step: the floor every variant stands on;
* ``steps (ffcv)``: the same set-up, plus the FFCV train loader JIT-compiled, ``--steps`` training
  steps through ``eed.engine.loops.train_one_epoch``, then the rest of the epoch's batches drained
  without training, so that every page of the memory-mapped ``.beton`` an epoch touches is resident
  (the file's pages count in RSS once read);
* ``steps (tensor)``: the same with ``data.backend=tensor`` (the train split read into memory as
  uint8, then the subset taken; the test and val splits too, as the trainer's set-up holds them);
* ``eed.engine.trainer.train (1 epoch)``: the whole trainer for one epoch of ``--steps`` steps: FFCV
  loaders, validation (5,000 images), checkpoints, the final test pass (10,000) and the
  MLflow run with ``log_model`` (sqlite store under bench/results/memory/); run once
  (``--no-full`` skips it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("imports + model", "steps (ffcv)", "steps (tensor)")
FULL = "eed.engine.trainer.train (1 epoch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="training steps per child (default 10)")
    parser.add_argument("--no-full", action="store_true", help="skip the whole-trainer child")


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    """VmHWM: peak resident set of this process's address space (reset by exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _peaks() -> dict:
    return {"peak_rss_mib": _peak_rss_mib(), "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(variant: str, prepared: str, steps: int, threads: int) -> dict:
    """Runs in the child process; returns what it measured."""
    import torch

    torch.set_num_threads(threads)
    import eed.engine.trainer as trainer
    from bench import common
    from eed.engine.loops import train_one_epoch

    batch = 128
    extra = {}
    if variant == FULL:
        out = Path(tempfile.mkdtemp(prefix="full-", dir=common.RESULTS / "memory"))
        cfg = common.config(
            prepared,
            f"data.train_subset={steps * batch}",
            "train.epochs=1",
            "tracking.enabled=true",
            f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
            "tracking.experiment=bench-memory",
        )
        trainer.train(cfg, out / "train", resume=False)
        return {"variant": variant, **_peaks(), "threads": torch.get_num_threads()}

    backend = "tensor" if "tensor" in variant else "ffcv"
    setup = common.training_setup(common.config(prepared, f"data.backend={backend}"), threads)
    if variant != "imports + model":
        loader = setup.train_loader
        loader.warmup(show_status=False)
        done = []

        def stop_after_steps() -> bool:
            done.append(1)
            return len(done) >= steps

        loader.set_epoch(1)
        train_one_epoch(
            setup.train_model,
            setup.objective,
            loader,
            setup.optimizer,
            setup.scheduler,
            setup.runtime,
            epoch=1,
            classifier_names=setup.classifier_names,
            should_stop=stop_after_steps,
        )
        extra["rss_after_steps_mib"] = _rss_mib()
        for _ in loader:  # the rest of an epoch's data, not trained on: every page an epoch reads
            pass
        extra["train_samples"] = loader.num_samples
    return {"variant": variant, **_peaks(), "rss_end_mib": _rss_mib(), "threads": torch.get_num_threads(), **extra}


def _spawn(variant: str, prepared: Path, steps: int, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "child", variant, str(prepared), str(steps), str(threads)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if process.returncode != 0:
        raise RuntimeError(f"memory child {variant!r} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result["rusage_children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def run(args: argparse.Namespace):
    from bench import common

    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    (common.RESULTS / "memory").mkdir(parents=True, exist_ok=True)
    steps = 3 if args.quick and args.steps == 10 else args.steps
    children: list[dict] = []
    peaks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_index in range(args.repeats):
        for variant in common.rotate(list(VARIANTS), round_index):
            result = _spawn(variant, prepared, steps, threads)
            children.append(result)
            peaks[variant].append(result["peak_rss_mib"])
    rows = [common.Row(f"peak RSS: {v}", common.Stat(peaks[v]), "MiB") for v in VARIANTS]
    if not args.no_full:
        result = _spawn(FULL, prepared, steps, threads)
        children.append(result)
        rows.append(
            common.Row(
                f"peak RSS: {FULL}",
                common.Stat([result["peak_rss_mib"]]),
                "MiB",
                note="once; includes validation, test, MLflow log_model",
            )
        )
    after = [c["rss_after_steps_mib"] for c in children if c["variant"] == "steps (ffcv)"]
    rows.append(
        common.Row("RSS right after the steps (ffcv)", common.Stat(after), "MiB", note="before draining the epoch")
    )
    return common.Result(
        name="memory",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        settings={"threads": threads, "steps": steps, "batch_size": 128, "repeats": args.repeats},
        details={"children": children},
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if len(sys.argv) == 6 and sys.argv[1] == "child":
        _, _, name, prepared_dir, step_count, thread_count = sys.argv
        print(json.dumps(child(name, prepared_dir, int(step_count), int(thread_count))))
    else:
        sys.exit("usage: python bench/run.py memory [options]")
