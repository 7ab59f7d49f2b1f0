"""The GPU check of issue 16: one prepared, timed run that proves eed's CUDA paths and measures
them, written to fit a lent GPU machine's minutes (``bench/gpu_check.sh`` sets up, then runs
this; ``make gpu-check``).

Steps, each in a process of its own with its own time limit; a step that fails or runs out of
time is recorded as such (with whatever it had measured) and the next one still runs:

1. ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` (skipped, with the reason, without CUDA);
2. ``prepare``: the real CIFAR-100 through the project's ``eed.data.prepare`` (optionally a
   balanced subset of it first, ``--per-class``: what travels to a machine that lacks the archive);
3. ``race``: ResNet-18 at the paper's width (64), batch 128, method eed, through the project's
   own ``eed.engine.loops.train_one_epoch``, each variant on the set-up the trainer builds for its
   config (``eed.engine.setup.build_training``: network with ``model.init`` and its stem, loaders,
   objective, SGD, schedule): fp32, bf16, bf16 + channels_last, and that + ``torch.compile`` (the
   bf16 + channels_last set-up's network compiled), interleaved in one process (order rotating
   every round, warm-up untimed; the compiled variant joins after its compile, so an over-long
   compile still leaves the other three measured). Reported: img/s, the paper's epoch (50,000 images) and 200 epochs
   extrapolated from it (plus one pass over the test split, as the trainer runs every epoch), GPU
   memory peak, and host-device syncs per step (``torch.cuda.set_sync_debug_mode('warn')``,
   warnings counted per step, outside the render interval: the loop runs with a progress clock
   that never falls due, ``train_one_epoch(clock=...)``, so it renders only at the last step);
4. ``grid``: k small CIFAR trainings (the five methods, ``eed.engine.trainer.train``, tensor
   backend, width 16) as separate processes at once vs one after another; each process is
   started and ready (imports, CUDA context) before the clock starts. Ratio = sequential seconds
   / concurrent seconds = concurrent throughput / sequential throughput.

Writes ``gpu_check.json`` and ``gpu_check.md`` (``gpu_check-dry.*`` with ``--dry``) to ``--out``
(default ``$OUT`` when set, else ``bench/results/``). ``--dry`` runs every step's logic on the CPU
with tiny sizes (width 4, 3 steps a round, k = 2, ``torch.compile`` with the eager backend, the
CUDA tests collected and skipped), so the script is known to work before GPU time is spent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import pickle
import resource
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# `python bench/gpu_check.py` puts bench/ on the path; the package is `bench`, from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from eed.methods import method_names

STEPS = ("cuda_tests", "prepare", "race", "grid")
METHODS = method_names()  # baseline, branchynet, distill, byot, eed: the paper's Table I
VARIANTS = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")
DEFAULT_VARIANT = "bf16+channels_last"  # what `scale=paper` trains with on CUDA (precision/channels_last auto)
PAPER_IMAGES, PAPER_TEST_IMAGES, PAPER_EPOCHS = 50_000, 10_000, 200
GOALS = {"speedup": 2.0, "epoch_s": 5.0, "run_min": 17.0, "grid": 3.0, "syncs": 0.0}


@dataclass(frozen=True)
class Sizes:
    """Everything the GPU run and the dry run do differently (the logic is the same)."""

    width: int  # race: ResNet-18 width (64 = the paper's)
    batch: int  # race: batch size (128 = the paper's)
    steps: int  # race: steps per variant per round (= one loader epoch)
    eager_rounds: int  # race: rounds of the three eager variants before compiling
    rounds: int  # race: rounds of all four variants after the compile
    eval_batches: int  # race: test-split batches timed for the per-epoch test pass (0 = all)
    compile_backend: str  # torch.compile backend: inductor on the GPU; eager on the CPU (no C++ build)
    grid_k: int  # grid: concurrent trainings (the first k methods)
    grid_width: int
    grid_batch: int
    grid_epochs: int
    grid_subset: int  # grid: data.train_subset (0 = the whole train split)
    limits: tuple[tuple[str, int], ...]  # seconds per step


GPU = Sizes(
    width=64,
    batch=128,
    steps=40,
    eager_rounds=2,
    rounds=4,
    eval_batches=0,
    compile_backend="inductor",
    grid_k=5,
    grid_width=16,
    grid_batch=128,
    grid_epochs=3,
    grid_subset=0,
    limits=(("cuda_tests", 100), ("prepare", 45), ("race", 220), ("grid", 110)),
)
DRY = Sizes(
    width=4,
    batch=16,
    steps=3,
    eager_rounds=1,
    rounds=1,
    eval_batches=2,
    compile_backend="eager",
    grid_k=2,
    grid_width=4,
    grid_batch=16,
    grid_epochs=1,
    grid_subset=32,
    # Hang detectors, far above need: the dry mode runs in the test suite, on machines that may be busy.
    limits=(("cuda_tests", 600), ("prepare", 600), ("race", 600), ("grid", 900)),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry", action="store_true", help="every step on the CPU with tiny sizes (< 2 minutes)")
    p.add_argument("--out", default=None, help="folder for gpu_check.json/.md (default $OUT, else bench/results/)")
    p.add_argument(
        "--work",
        default=None,
        help="scratch folder: prepared data, grid outputs, logs (default bench/results/gpu_check-work[-dry])",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding cifar-100-python.tar.gz (or the extracted "
        "folder); default $EED_DATA_ROOT, else ../shared/data",
    )
    p.add_argument(
        "--per-class",
        default=None,
        help="TRAIN,TEST images per class: prepare a balanced subset of the real CIFAR-100 "
        "(default: the whole dataset; --dry: 5,2)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every training (repeatable), e.g. data.val_size=0",
    )
    p.add_argument(
        "--steps", default=",".join(STEPS), help=f"steps to run, comma-separated (default {','.join(STEPS)})"
    )
    p.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS", help="another time limit for a step")
    # Internal: one step, or one grid training, in a process of its own.
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--step-out", help=argparse.SUPPRESS)
    p.add_argument("--grid-worker", choices=METHODS, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------- shared by the steps


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    work: Path
    device: str  # "cuda" or "cpu"
    source_env: str | None  # $EED_DATA_ROOT as this check found it

    @property
    def prepared(self) -> Path:
        return self.work / "prepared"

    def data_overrides(self) -> list[str]:
        """The data the prepare step wrote, and the caller's overrides."""
        subset = ["data.val_size=0"] if self.per_class() else []
        return [f"data.root={self.data_root()}", *subset, *self.args.overrides]

    def per_class(self) -> tuple[int, int] | None:
        text = self.args.per_class or ("5,2" if self.args.dry else "")
        if not text:
            return None
        train, test = (int(v) for v in text.split(","))
        return train, test

    def data_root(self) -> Path:
        """Where prepare reads CIFAR-100: the subset written into the work folder, or the source."""
        return self.work / "cifar-subset" if self.per_class() else self.source_root()

    def source_root(self) -> Path:
        if self.args.data_root:
            return Path(self.args.data_root).resolve()
        return Path(self.source_env or common.SHARED_DATA).resolve()

    def config(self, *overrides: str):
        return common.config(self.prepared, *self.data_overrides(), f"train.device={self.device}", *overrides)


def context(args: argparse.Namespace) -> Context:
    import torch

    sizes = DRY if args.dry else GPU
    limits = dict(sizes.limits)
    for item in args.limit:
        name, seconds = item.split("=")
        limits[name] = int(seconds)
    sizes = Sizes(**{**asdict(sizes), "limits": tuple(limits.items())})
    work = Path(args.work or common.RESULTS / ("gpu_check-work-dry" if args.dry else "gpu_check-work")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not args.dry else "cpu"
    source_env = os.environ.get("GPU_CHECK_SOURCE_ROOT", os.environ.get("EED_DATA_ROOT"))
    ctx = Context(args, sizes, work, device, source_env)
    # $EED_DATA_ROOT wins over data.root in eed: point it at the data this check prepares from
    # (for the steps' own processes too, which keep the original in GPU_CHECK_SOURCE_ROOT).
    os.environ["GPU_CHECK_SOURCE_ROOT"] = str(ctx.source_root())
    os.environ["EED_DATA_ROOT"] = str(ctx.data_root())
    return ctx


def forwarded(args: argparse.Namespace) -> list[str]:
    """The options a step's (or a grid worker's) process needs, as given to this one."""
    out = ["--dry"] if args.dry else []
    for name in ("work", "data_root", "per_class"):
        if getattr(args, name):
            out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for item in args.overrides:
        out += ["--set", item]
    return out


def emit(path: str | None, payload: dict[str, Any]) -> None:
    """Write a step's results so far (atomically): a step killed at its limit keeps them."""
    if not path:
        return
    temporary = Path(path).with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def rows_of(rows: list[common.Row]) -> list[dict[str, Any]]:
    return [row.to_dict() for row in rows]


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- 1. CUDA tests


def step_cuda_tests(ctx: Context, out: str | None) -> dict[str, Any]:
    """pytest -m cuda on tests/test_cuda.py; counts and each test's outcome from its JUnit XML."""
    report = ctx.work / "cuda-tests.xml"
    report.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "tests/test_cuda.py",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
    ]
    env = dict(os.environ)
    if ctx.per_class():  # the tests' real CIFAR-100: the archive this check prepares from
        archive = ctx.data_root() / "cifar-100-python.tar.gz"
        if archive.is_file():
            env.setdefault("EED_TEST_CIFAR100", str(archive))
    limit = dict(ctx.sizes.limits)["cuda_tests"] - 5
    run = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, timeout=limit, env=env)
    cases = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome, message = kind, (element.get("message") or "")[:300]
        cases.append({"test": case.get("name"), "outcome": outcome, "message": message})
    counts = {kind: sum(c["outcome"] == kind for c in cases) for kind in ("passed", "failure", "error", "skipped")}
    rows = [
        common.Row("CUDA tests collected", common.Stat([float(len(cases))]), "tests"),
        common.Row(
            "CUDA tests passed",
            common.Stat([float(counts["passed"])]),
            "tests",
            target=f"= {len(cases)}",
            met=counts["passed"] == len(cases) if ctx.device == "cuda" else None,
        ),
        common.Row(
            "CUDA tests failed or in error",
            common.Stat([float(counts["failure"] + counts["error"])]),
            "tests",
            target="= 0",
            met=counts["failure"] + counts["error"] == 0,
        ),
        common.Row(
            "CUDA tests skipped",
            common.Stat([float(counts["skipped"])]),
            "tests",
            note=(cases[0]["message"][:80] if counts["skipped"] and cases else ""),
        ),
    ]
    ok = run.returncode == 0 and counts["failure"] + counts["error"] == 0
    return {
        "status": "ok" if ok else "failed",
        "rows": rows_of(rows),
        "details": {"returncode": run.returncode, "cases": cases, "output_tail": run.stdout[-3000:]},
        **({} if ok else {"error": f"pytest exited {run.returncode}: {run.stdout[-600:]}"}),
    }


# --------------------------------------------------------------------------- 2. prepare


def write_subset_archive(source: Path, target: Path, per_class: tuple[int, int]) -> dict[str, int]:
    """A balanced subset of the real CIFAR-100 (the first ``per_class`` images of each class in
    file order), as ``target/cifar-100-python.tar.gz`` in the official layout, which the
    project's reader accepts (it checks content and balance, not counts)."""
    from rich.console import Console

    from eed.data.sources import read_cifar

    raw = read_cifar("cifar100", source, download=False, console=Console(stderr=True, quiet=True))
    members: dict[str, bytes] = {}
    sizes = {}
    for split, arrays, count in (("train", raw.train, per_class[0]), ("test", raw.test, per_class[1])):
        labels = arrays.labels
        chosen = sorted(
            itertools.chain.from_iterable(
                [int(i) for i in (labels == c).nonzero()[0][:count]] for c in range(len(raw.class_names))
            )
        )
        images = arrays.images[chosen]  # N x H x W x 3
        data = images.transpose(0, 3, 1, 2).reshape(len(chosen), -1).copy()
        members[split] = pickle.dumps(
            {
                "data": data,
                "fine_labels": [int(v) for v in labels[chosen]],
                "filenames": [f"{split}_{i:05d}.png" for i in chosen],
            },
            protocol=2,
        )
        sizes[split] = len(chosen)
    members["meta"] = pickle.dumps({"fine_label_names": list(raw.class_names)}, protocol=2)
    target.mkdir(parents=True, exist_ok=True)
    partial = target / "cifar-100-python.tar.gz.partial"
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    os.replace(partial, target / "cifar-100-python.tar.gz")
    return sizes


def step_prepare(ctx: Context, out: str | None) -> dict[str, Any]:
    from rich.console import Console

    from eed.data import DataError, load_manifest, prepare

    started = common.now()
    details: dict[str, Any] = {"source": str(ctx.source_root())}
    per_class = ctx.per_class()
    if per_class and not (ctx.data_root() / "cifar-100-python.tar.gz").is_file():
        details["subset"] = write_subset_archive(ctx.source_root(), ctx.data_root(), per_class)
    subset_s = common.now() - started
    cfg = ctx.config()
    try:
        manifest = load_manifest(cfg)
        details["prepared"] = "already up to date"
    except DataError:
        prepare(cfg, console=Console(stderr=True, quiet=True))
        manifest = load_manifest(cfg)
        details["prepared"] = "written"
    details.update(
        prepared_dir=str(ctx.prepared),
        data_root=str(ctx.data_root()),
        splits={split: record.num_samples for split, record in manifest.splits.items()},
    )
    rows = [
        common.Row("subset archive written", common.Stat([subset_s]), "s"),
        common.Row(
            "prepare (eed.data.prepare, or the manifest check)", common.Stat([common.now() - started - subset_s]), "s"
        ),
    ]
    return {"status": "ok", "rows": rows_of(rows), "details": details}


# --------------------------------------------------------------------------- 3. race


class _RenderAtEpochEnd:
    """The loop's clock (``train_one_epoch(clock=...)``) while syncs are counted: never due, so
    the loop renders (and reads the loss) only at the epoch's last step, and every other step is
    outside the render interval."""

    def due(self) -> bool:
        return False


# The eager variants' config overrides: each is the set-up `eed train` builds with them.
VARIANT_OVERRIDES = {
    "fp32": ("train.precision=fp32", "train.channels_last=off"),
    "bf16": ("train.precision=bf16", "train.channels_last=off"),
    "bf16+channels_last": ("train.precision=bf16", "train.channels_last=on"),
}


def step_race(ctx: Context, out: str | None) -> dict[str, Any]:
    import torch

    from eed.engine import loops

    s, device = ctx.sizes, ctx.device
    base = (
        "method=eed",
        f"model.width={s.width}",
        f"train.batch_size={s.batch}",
        f"data.train_subset={s.steps * s.batch}",
        "data.backend=tensor",
        "train.schedule=step",
        f"train.epochs={PAPER_EPOCHS}",
        "train.compile=false",
    )
    # Each eager variant trains the trainer's own set-up (eed.engine.setup.build_training) of its
    # config: network (model.init, stem), loaders, objective, SGD and schedule; same seed, so the
    # same initial weights. The compiled variant compiles the bf16+channels_last set-up's network.
    setups = {
        variant: common.training_setup(ctx.config(*base, *overrides))
        for variant, overrides in VARIANT_OVERRIDES.items()
    }
    for variant, setup in setups.items():
        assert len(setup.train_loader) == s.steps, (variant, len(setup.train_loader), s.steps)
    names = setups[DEFAULT_VARIANT].classifier_names
    modules = {variant: setup.train_model for variant, setup in setups.items()}
    epoch = itertools.count()
    peak: dict[str, float] = {}

    def run(variant: str, should_stop: Callable[[], bool] = lambda: False, clock=None) -> tuple[float, int]:
        setup = setups[variant]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = common.now()
        setup.train_loader.set_epoch(next(epoch))
        stats = loops.train_one_epoch(
            modules[variant],
            setup.objective,
            setup.train_loader,
            setup.optimizer,
            setup.scheduler,
            setup.runtime,
            epoch=0,
            classifier_names=names,
            should_stop=should_stop,
            clock=clock,
        )
        synchronize(device)
        seconds = common.now() - start
        used = (
            torch.cuda.max_memory_allocated()
            if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        peak[variant] = max(peak.get(variant, 0.0), used / 2**20)
        return seconds, stats.images

    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rounds: list[dict[str, float]] = []
    warmup: dict[str, float] = {}
    result: dict[str, Any] = {"status": "partial", "rows": [], "details": {}}

    def report(status: str) -> dict[str, Any]:
        result.update(
            status=status,
            rows=rows_of(race_rows(ctx, seconds, rounds, peak, evaluation, syncs)),
            details={
                "warmup_s": warmup,
                "rounds_s": rounds,
                "images_per_epoch": s.steps * s.batch,
                "device": device,
                "compile_backend": s.compile_backend,
                "syncs": syncs,
                "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            },
        )
        emit(out, result)
        return result

    evaluation: dict[str, float] = {}
    syncs: dict[str, Any] = {}
    for variant in list(setups):  # warm-up, untimed: cudnn's algorithm search, allocator growth
        warmup[variant] = run(variant)[0]
    for index in range(s.eager_rounds + s.rounds):
        if index == s.eager_rounds:  # the compiled variant joins once compiled (its warm-up = the compile)
            report("partial")
            # The bf16+channels_last set-up (its network, optimizer, schedule, loader), compiled with the sizes'
            # backend (train.compile always uses inductor, which the dry run cannot build on a CPU).
            setups["bf16+channels_last+compile"] = setups[DEFAULT_VARIANT]
            modules["bf16+channels_last+compile"] = torch.compile(modules[DEFAULT_VARIANT], backend=s.compile_backend)
            warmup["bf16+channels_last+compile"] = run("bf16+channels_last+compile")[0]
        timings = {}
        for variant in common.rotate(list(setups), index):
            elapsed, images = run(variant)
            seconds[variant].append(images / elapsed)
            timings[variant] = elapsed
        rounds.append(timings)
        report("partial")

    # The per-epoch test pass the trainer runs (validate -> collect_outputs), at the default variant.
    setup = setups[DEFAULT_VARIANT]
    runtime, test_loader = setup.runtime, setup.test_loader
    batches = s.eval_batches or len(test_loader)
    for _attempt in range(2):  # the first one warms up
        synchronize(device)
        start = common.now()
        collected = loops.collect_outputs(
            setup.model,
            itertools.islice(iter(test_loader), batches),
            runtime.device,
            autocast=runtime.autocast,
            channels_last=runtime.channels_last,
        )
        synchronize(device)
        evaluation = {"images": float(collected.num_samples), "seconds": common.now() - start}

    # Host-device syncs per step, one untimed epoch per variant (after the timed rounds).
    for variant in setups:
        syncs[variant] = count_syncs(device, lambda stop, clock: run(variant, stop, clock), s.steps)
    return report("ok")


def count_syncs(device: str, epoch: Callable[[Callable[[], bool], Any], Any], steps: int) -> dict[str, Any]:
    """Synchronizing CUDA calls per training step, from the warnings of
    ``torch.cuda.set_sync_debug_mode('warn')``, read after every step of one epoch, which runs
    with a clock that never falls due (:class:`_RenderAtEpochEnd`). Step 1 also holds the epoch's
    start (the loader's index transfer) and the last step the render."""
    import torch

    after: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = device == "cuda"
        if available:
            torch.cuda.set_sync_debug_mode("warn")
        try:

            def mark() -> bool:
                after.append(sum("synchroniz" in str(w.message) for w in caught))
                return False

            epoch(mark, _RenderAtEpochEnd())
        finally:
            if available:
                torch.cuda.set_sync_debug_mode(0)
        messages = sorted({str(w.message)[:200] for w in caught if "synchroniz" in str(w.message)})
    per_step = [b - a for a, b in zip([0, *after], after)]
    return {
        "per_step": per_step,
        "inner": per_step[1:-1] if len(per_step) > 2 else [],
        "first_step": per_step[0] if per_step else None,
        "last_step_with_render": per_step[-1] if per_step else None,
        "steps": len(per_step),
        "expected_steps": steps,
        "sync_debug_mode": available,
        "messages": messages[:10],
    }


def race_rows(
    ctx: Context,
    img_s: dict[str, list[float]],
    rounds: list[dict[str, float]],
    peak: dict[str, float],
    evaluation: dict[str, float],
    syncs: dict[str, Any],
) -> list[common.Row]:
    s = ctx.sizes
    rows: list[common.Row] = []
    for variant in VARIANTS:
        if img_s[variant]:
            rows.append(
                common.Row(
                    f"{variant} img/s",
                    common.Stat(img_s[variant]),
                    "img/s",
                    note=f"width {s.width}, batch {s.batch}, eed, {s.steps} steps a round",
                )
            )

    def ratio(variant: str) -> list[float]:  # per round, where both ran
        return [r["fp32"] / r[variant] for r in rounds if variant in r and "fp32" in r]

    for variant, target in (("bf16", None), (DEFAULT_VARIANT, GOALS["speedup"]), ("bf16+channels_last+compile", None)):
        values = ratio(variant)
        if values:
            rows.append(
                common.target_row(f"{variant} ÷ fp32 img/s", values, ">=", target)
                if target
                else common.Row(f"{variant} ÷ fp32 img/s", common.Stat(values), "×")
            )
    test_s = PAPER_TEST_IMAGES * evaluation["seconds"] / evaluation["images"] if evaluation else 0.0
    for variant in (DEFAULT_VARIANT, "bf16+channels_last+compile", "fp32"):
        if not img_s[variant]:
            continue
        epoch = [PAPER_IMAGES / v for v in img_s[variant]]
        goal = variant != "fp32"
        rows.append(
            common.target_row(f"paper epoch (50,000 images), {variant}", epoch, "<=", GOALS["epoch_s"], "s")
            if goal
            else common.Row(f"paper epoch (50,000 images), {variant}", common.Stat(epoch), "s")
        )
        if test_s:
            rows.append(
                common.Row(
                    f"paper epoch + its test pass (10,000 images), {variant}",
                    common.Stat([e + test_s for e in epoch]),
                    "s",
                    note=f"test pass at {DEFAULT_VARIANT}: {test_s:.2f} s",
                )
            )
        run = [PAPER_EPOCHS * (e + test_s) / 60 for e in epoch]
        rows.append(
            common.target_row(
                f"paper run (200 epochs, with test passes), {variant}", run, "<=", GOALS["run_min"], "min"
            )
            if goal
            else common.Row(f"paper run (200 epochs, with test passes), {variant}", common.Stat(run), "min")
        )
    for variant in VARIANTS:
        if variant in peak:
            what = "GPU memory peak" if ctx.device == "cuda" else "peak RSS (dry: no GPU)"
            rows.append(common.Row(f"{what}, {variant}", common.Stat([peak[variant]]), "MiB"))
    for variant, found in syncs.items():
        inner = found["inner"]
        note = (
            f"first step {found['first_step']}, last step (render) {found['last_step_with_render']}"
            if found["sync_debug_mode"]
            else "dry: sync debug mode needs CUDA, nothing can be counted"
        )
        if inner:
            rows.append(
                common.target_row(
                    f"host syncs per step outside the render interval, {variant}",
                    [float(v) for v in inner],
                    "<=",
                    GOALS["syncs"],
                    "syncs",
                    note=note,
                )
            )
    return rows


# --------------------------------------------------------------------------- 4. grid


def grid_worker(args: argparse.Namespace) -> int:
    """One small training of the grid: set up, say "ready", wait for "go" on stdin, train, and
    print its start/end times and images as one JSON line."""
    import torch
    from rich.console import Console

    from eed.engine import trainer

    ctx = context(args)
    s = ctx.sizes
    method = args.grid_worker
    cfg = ctx.config(
        f"method={method}",
        "data.backend=tensor",
        f"model.width={s.grid_width}",
        f"train.batch_size={s.grid_batch}",
        f"train.epochs={s.grid_epochs}",
        f"data.train_subset={s.grid_subset}",
        "train.checkpoint_every=1000",
    )
    from eed.data.ffcv_import import import_ffcv

    import_ffcv()  # imports (numba's compile of FFCV's fields) and the CUDA context: before the clock
    if ctx.device == "cuda":
        torch.zeros(1, device="cuda")
    out = ctx.work / "grid" / method
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    result = trainer.train(cfg, out, resume="never", console=Console(stderr=True, quiet=True))
    end = time.time()
    history = result.history.get("throughput_img_s") or result.history.get("train/throughput_img_s") or []
    print(
        json.dumps(
            {
                "method": method,
                "start": start,
                "end": end,
                "epochs": result.epochs_completed,
                "img_s_per_epoch": [v for _, v in history],
            }
        ),
        flush=True,
    )
    return 0


def step_grid(ctx: Context, out: str | None) -> dict[str, Any]:
    s = ctx.sizes
    methods = list(METHODS[: s.grid_k])
    logs = ctx.work / "grid-logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), *forwarded(ctx.args)]

    def start(method: str, tag: str) -> subprocess.Popen:
        log = open(logs / f"{tag}-{method}.log", "w")  # noqa: SIM115 (closed with the process)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            [*command, "--grid-worker", method],
            cwd=common.REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )

    def ready(process: subprocess.Popen, method: str) -> None:
        line = process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"grid worker {method} did not start: {line!r} (see {logs})")

    def finish(process: subprocess.Popen, method: str) -> dict[str, Any]:
        lines = process.stdout.read().strip().splitlines()
        if process.wait() != 0 or not lines:
            raise RuntimeError(f"grid worker {method} exited {process.returncode} (see {logs}/*-{method}.log)")
        return json.loads(lines[-1])

    # Every process is started and ready first (start-up overlaps and stays out of the clock).
    waiting = {tag: {method: start(method, tag) for method in methods} for tag in ("sequential", "concurrent")}
    for group in waiting.values():
        for method, process in group.items():
            ready(process, method)
    # One after another: each run's own training time.
    sequential = []
    for method, process in waiting["sequential"].items():
        process.stdin.write("go\n")
        process.stdin.flush()
        sequential.append(finish(process, method))
    emit(out, {"status": "partial", "rows": [], "details": {"sequential": sequential}})
    # All at once: all told to go together; from the first start to the last end.
    processes = waiting["concurrent"]
    for process in processes.values():
        process.stdin.write("go\n")
        process.stdin.flush()
    concurrent = [finish(process, method) for method, process in processes.items()]
    sequential_s = sum(r["end"] - r["start"] for r in sequential)
    concurrent_s = max(r["end"] for r in concurrent) - min(r["start"] for r in concurrent)
    k = len(methods)
    rows = [
        common.Row(
            f"grid: {k} trainings one after another",
            common.Stat([sequential_s]),
            "s",
            note=f"{', '.join(methods)}; width {s.grid_width}, {s.grid_epochs} epochs, tensor backend",
        ),
        common.Row(f"grid: {k} trainings at once", common.Stat([concurrent_s]), "s"),
        common.target_row(
            f"grid throughput, {k} at once ÷ one after another",
            [sequential_s / concurrent_s],
            ">=",
            GOALS["grid"],
            note="goal for k = 5 on one H200",
        ),
    ]
    return {"status": "ok", "rows": rows_of(rows), "details": {"sequential": sequential, "concurrent": concurrent}}


# --------------------------------------------------------------------------- the steps, each in its own process


RUNNERS = {"cuda_tests": step_cuda_tests, "prepare": step_prepare, "race": step_race, "grid": step_grid}


def run_step(args: argparse.Namespace) -> int:
    ctx = context(args)
    result = RUNNERS[args.step](ctx, args.step_out)
    emit(args.step_out, result)
    return 0


def run_isolated(name: str, args: argparse.Namespace, limit: int, work: Path) -> dict[str, Any]:
    """One step in a process of its own (a new session, so that its children die with it),
    stopped at ``limit`` seconds; what it wrote last is kept."""
    out = work / f"step-{name}.json"
    out.unlink(missing_ok=True)
    log = work / f"step-{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), *forwarded(args), "--step", name, "--step-out", str(out)]
    started = common.now()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, cwd=common.REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode: int | None = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
    seconds = common.now() - started
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"rows": [], "details": {}}
    tail = log.read_text(errors="replace")[-2000:]
    if returncode is None:
        result["status"] = "timeout"
        result["error"] = f"stopped at its limit of {limit} s; results so far kept. Log tail: {tail[-600:]}"
    elif returncode != 0:
        result["status"] = "failed"
        result["error"] = f"exited {returncode}: {tail[-1200:]}"
    result.setdefault("status", "failed")
    result.update(seconds=round(seconds, 1), limit_s=limit, log=str(log))
    return result


def machine() -> dict[str, Any]:
    import torch

    info = common.machine()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_mib=props.total_memory // 2**20,
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
        )
    else:
        info.update(gpu=None, gpus=0)
    return info


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    where = f"{m.get('gpu') or 'no GPU'}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}"
    lines = [
        f"# GPU check{' (dry run, CPU, tiny sizes)' if report['dry'] else ''}",
        "",
        f"`{report['command']}` · {where} · {m['date']} · git {m['git']} · {report['wall_seconds']:.0f} s",
        "",
        "| step | status | metric | median | min–max | unit | goal | met? | note |",
        "|---|---|---|---:|---:|---|---|---|---|",
    ]
    for name, step in report["steps"].items():
        status = f"{step['status']} ({step['seconds']:.0f} s of {step['limit_s']} s)"
        if not step["rows"]:
            lines.append(f"| {name} | {status} | — | | | | | | {step.get('error', '')[:160].replace('|', '/')} |")
        for row in step["rows"]:
            met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
            lines.append(
                f"| {name} | {status} | {row['metric']} | {common.fmt(row['median'], row['unit'])} | "
                f"{common.fmt(row['min'], row['unit'])}–{common.fmt(row['max'], row['unit'])} | "
                f"{row['unit']} | {row['target']} | {met} | {row['note'].replace('|', '/')} |"
            )
        if step["rows"] and step.get("error"):
            lines.append(f"| {name} | {status} | error | | | | | | {step['error'][:160].replace('|', '/')} |")
    return "\n".join(lines).replace("\n\n|", "\n\n|") + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.grid_worker:
        return grid_worker(args)
    if args.step:
        return run_step(args)
    started = common.now()
    ctx = context(args)
    limits = dict(ctx.sizes.limits)
    out = Path(args.out or os.environ.get("OUT") or common.RESULTS).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_check-dry" if args.dry else "gpu_check"
    wanted = [step for step in args.steps.split(",") if step]
    steps: dict[str, Any] = {}
    report = {
        "benchmark": name,
        "dry": args.dry,
        "command": "python bench/gpu_check.py " + shlex.join(argv or sys.argv[1:]),
        "machine": machine(),
        "settings": {
            **asdict(ctx.sizes),
            "limits": limits,
            "device": ctx.device,
            "overrides": ctx.data_overrides(),
            "goals": GOALS,
        },
        "steps": steps,
    }
    for step in STEPS:
        if step not in wanted:
            continue
        print(f"[gpu_check] {step} (limit {limits[step]} s)…", flush=True)
        steps[step] = run_isolated(step, args, limits[step], ctx.work)
        print(
            f"[gpu_check] {step}: {steps[step]['status']} in {steps[step]['seconds']:.0f} s"
            + (f": {steps[step]['error'][:300]}" if steps[step].get("error") else ""),
            flush=True,
        )
        report["wall_seconds"] = common.now() - started
        write(out, name, report)  # after every step: a machine taken back mid-run leaves the rest
    report["wall_seconds"] = common.now() - started
    report["machine"]["load_average_end"] = list(os.getloadavg())
    json_path, md_path = write(out, name, report)
    print(md_path.read_text(), flush=True)
    print(f"[gpu_check] wrote {json_path} and {md_path} ({report['wall_seconds']:.0f} s)", flush=True)
    return 0 if all(step["status"] == "ok" for step in steps.values()) else 1


def write(out: Path, name: str, report: dict[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
